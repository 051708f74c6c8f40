//! Requests of the sa's services that are more than their fields, turned into the store's inputs.

use quarry_core::model::ChallengeType;
use quarry_core::{Identifier, Problem};
use quarry_proto::convert::identifiers_from_pb;
use quarry_proto::sa as sapb;

use crate::store::{NewAuthorization, NewOrder};

/// The order NewOrderAndAuthorizations asks for, its new authorizations' identifiers and challenge types checked.
pub(crate) fn new_order(req: sapb::NewOrderAndAuthorizationsRequest) -> Result<NewOrder, Problem> {
    let new_authorizations = req
        .new_authorizations
        .iter()
        .map(|authz| {
            let identifier = authz
                .identifier
                .as_ref()
                .ok_or_else(|| Problem::malformed("new authorization without an identifier"))
                .and_then(Identifier::try_from)?;
            let challenge_types = authz
                .challenge_types
                .iter()
                .map(|t| {
                    ChallengeType::parse(t).ok_or_else(|| Problem::malformed(format!("unknown challenge type {t:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(NewAuthorization { identifier, challenge_types, token: authz.token.clone(), expires: authz.expires })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(NewOrder {
        account_id: req.account_id,
        identifiers: identifiers_from_pb(&req.identifiers)?,
        expires: req.expires,
        reused_authorization_ids: req.reused_authorization_ids,
        new_authorizations,
        profile: req.profile,
        replaces: req.replaces,
        replaces_serial: req.replaces_serial,
    })
}
