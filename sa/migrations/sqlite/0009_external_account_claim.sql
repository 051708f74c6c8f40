-- An external account binding key binds one account (unless the wfe allows reuse): the first account created with
-- it holds its claim, and the unique index refuses a second, even one created concurrently.
ALTER TABLE accounts ADD COLUMN external_account_claim TEXT;
UPDATE accounts SET external_account_claim = external_account_id
  WHERE external_account_id != ''
    AND id IN (SELECT MIN(id) FROM accounts WHERE external_account_id != '' GROUP BY external_account_id);
CREATE UNIQUE INDEX accounts_external_account_claim ON accounts (external_account_claim);
