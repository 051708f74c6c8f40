#!/usr/bin/env python3
"""Tests of scripts/promote.py: a digest moves one tier at a time, only on a passing, recent report of the tier
before that tested that very digest. Run: python3 scripts/test_promote.py"""

import datetime
import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import promote  # noqa: E402

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.timezone.utc)
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def report(**changes):
    passing = {
        "environment": "pre-staging",
        "directory": "https://acme.pre-staging.quarry.example.com/directory",
        "version": "0.1.0",
        "commit": "0123456789ab",
        "image_digest": A,
        "passed": True,
        "started_at": "2026-12-04T11:00:00Z",
        "finished_at": "2026-12-04T11:00:30Z",
        "steps": [{"name": "issue", "seconds": 1.5, "error": None}],
    }
    passing.update(changes)
    return passing


class Promotion(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.releases = Path(self.dir.name)
        promote.write_release(self.releases, "dev", A, "test")
        promote.write_release(self.releases, "pre-staging", A, "test")
        promote.write_release(self.releases, "staging", B, "test")

    def tearDown(self):
        self.dir.cleanup()

    def promote(self, tier, the_report, max_age_hours=24):
        return promote.promote(self.releases, tier, the_report, NOW, datetime.timedelta(hours=max_age_hours))

    def test_a_passing_report_moves_the_digest_to_the_next_tier_only(self):
        said = self.promote("staging", report())
        self.assertIn(f"staging now runs {A}", said)
        self.assertEqual(promote.read_digest(self.releases, "staging"), A)
        self.assertIsNone(promote.read_digest(self.releases, "production"))
        text = promote.release_path(self.releases, "staging").read_text()
        self.assertIn("version 0.1.0 (commit 0123456789ab)", text)
        self.assertIn(f'  digest: "{A}"', text)
        # Again: nothing to do.
        self.assertIn("already runs", self.promote("staging", report()))

    def test_refusals_name_their_reason(self):
        cases = [
            ("a failed probe", "staging", report(passed=False, steps=[{"name": "crl", "error": "stale"}]), "['crl']"),
            ("another image", "staging", report(image_digest=B), "tested image"),
            ("a tag", "staging", report(image_digest="0.1.0"), "tested image"),
            ("another tier's report", "staging", report(environment="dev"), "not 'pre-staging'"),
            ("a tier skipped", "production", report(), "not 'staging'"),
            ("a stale report", "staging", report(finished_at="2026-12-02T11:00:00Z"), "old"),
            ("a report from the future", "staging", report(finished_at="2026-12-05T11:00:00Z"), "in the future"),
            ("no offset", "staging", report(finished_at="2026-12-04T11:00:00"), "RFC 3339"),
            ("no version", "staging", report(version=None), "no version"),
            ("no commit", "staging", report(commit=""), "no commit"),
            ("dev is not promoted to", "dev", report(), "not a tier one promotes to"),
        ]
        for what, tier, the_report, reason in cases:
            with self.subTest(what):
                with self.assertRaises(promote.Refused) as refused:
                    self.promote(tier, the_report)
                self.assertIn(reason, str(refused.exception))
                self.assertEqual(promote.read_digest(self.releases, "staging"), B, "a refusal wrote nothing")

    def test_a_tier_before_without_a_release_refuses(self):
        promote.release_path(self.releases, "pre-staging").unlink()
        with self.assertRaises(promote.Refused) as refused:
            self.promote("staging", report())
        self.assertIn("pre-staging runs no release yet", str(refused.exception))

    def test_a_hand_edited_release_file_with_a_tag_is_refused(self):
        promote.release_path(self.releases, "pre-staging").write_text('image:\n  digest: "latest"\n')
        with self.assertRaises(promote.Refused):
            self.promote("staging", report())

    def test_the_command_line_records_promotes_and_shows(self):
        releases = ["--releases", str(self.releases)]
        self.assertEqual(promote.main([*releases, "record", "dev", "--digest", "v1.2"]), 1)
        self.assertEqual(promote.main([*releases, "record", "dev", "--digest", B]), 0)
        path = self.releases / "report.json"
        fresh = datetime.datetime.now(datetime.timezone.utc).isoformat()
        path.write_text(json.dumps(report(environment="dev", image_digest=B, finished_at=fresh)))
        self.assertEqual(promote.main([*releases, "promote", "pre-staging", "--report", str(path)]), 0)
        self.assertEqual(promote.read_digest(self.releases, "pre-staging"), B)
        path.write_text("not json")
        self.assertEqual(promote.main([*releases, "promote", "staging", "--report", str(path)]), 1)
        self.assertEqual(promote.main([*releases, "show"]), 0)


if __name__ == "__main__":
    unittest.main()
