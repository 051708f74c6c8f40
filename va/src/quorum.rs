//! Multi-perspective validation: when the remote perspectives' answers make a validation pass, following Boulder's
//! quorum. A pass needs all but the allowed failures (none with fewer than two remotes, one with two to five, two with
//! six or more) and successes from at least two distinct RIRs; the verdict is known as soon as it is certain.

use std::collections::BTreeSet;

use quarry_core::{ErrorKind, Problem};

/// One remote perspective's answer.
#[derive(Debug, Clone)]
pub struct RemoteOutcome {
    /// The RIR the remote runs in (as configured at the primary).
    pub rir: String,
    /// `None` when the remote's validation passed.
    pub problem: Option<Problem>,
}

/// Where the count stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// More answers are needed.
    Undecided,
    Pass,
    Fail(Problem),
}

/// Failures allowed among `remotes` perspectives (Boulder's table).
pub fn allowed_failures(remotes: usize) -> usize {
    match remotes {
        0 | 1 => 0,
        2..=5 => 1,
        _ => 2,
    }
}

/// Counts remote answers as they arrive.
#[derive(Debug)]
pub struct Tally {
    remotes: usize,
    /// RIRs of the remotes that have not answered yet.
    pending_rirs: Vec<String>,
    successes: usize,
    failures: usize,
    passing_rirs: BTreeSet<String>,
    first_failure: Option<Problem>,
}

/// Distinct RIRs a pass needs.
const MIN_RIRS: usize = 2;

impl Tally {
    /// A tally over remotes in these RIRs.
    pub fn new(rirs: impl IntoIterator<Item = String>) -> Self {
        let pending_rirs: Vec<String> = rirs.into_iter().collect();
        Self {
            remotes: pending_rirs.len(),
            pending_rirs,
            successes: 0,
            failures: 0,
            passing_rirs: BTreeSet::new(),
            first_failure: None,
        }
    }

    /// Records one answer and says whether the outcome is now certain.
    pub fn record(&mut self, outcome: RemoteOutcome) -> Verdict {
        if let Some(i) = self.pending_rirs.iter().position(|rir| *rir == outcome.rir) {
            self.pending_rirs.swap_remove(i);
        }
        match outcome.problem {
            None => {
                self.successes += 1;
                self.passing_rirs.insert(outcome.rir);
            }
            Some(problem) => {
                self.failures += 1;
                self.first_failure.get_or_insert(problem);
            }
        }
        self.verdict()
    }

    fn verdict(&self) -> Verdict {
        let needed = self.remotes - allowed_failures(self.remotes);
        if self.successes >= needed && self.passing_rirs.len() >= MIN_RIRS {
            return Verdict::Pass;
        }
        let possible_successes = self.successes + self.pending_rirs.len();
        let mut possible_rirs = self.passing_rirs.clone();
        possible_rirs.extend(self.pending_rirs.iter().cloned());
        if self.failures > allowed_failures(self.remotes) || possible_successes < needed {
            return Verdict::Fail(self.failure("too many remote perspectives failed"));
        }
        if possible_rirs.len() < MIN_RIRS {
            return Verdict::Fail(self.failure("the perspectives that passed are in fewer than two RIRs"));
        }
        Verdict::Undecided
    }

    /// The problem a failed quorum reports: the first remote failure, as Boulder words it.
    fn failure(&self, otherwise: &str) -> Problem {
        match &self.first_failure {
            Some(problem) => Problem::new(problem.kind, format!("During secondary validation: {}", problem.detail)),
            None => Problem::new(ErrorKind::Unauthorized, format!("During secondary validation: {otherwise}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(rir: &str) -> RemoteOutcome {
        RemoteOutcome { rir: rir.into(), problem: None }
    }
    fn fail(rir: &str) -> RemoteOutcome {
        RemoteOutcome { rir: rir.into(), problem: Some(Problem::new(ErrorKind::Dns, "no TXT record")) }
    }
    fn run(rirs: &[&str], outcomes: Vec<RemoteOutcome>) -> (Verdict, usize) {
        let mut tally = Tally::new(rirs.iter().map(|r| r.to_string()));
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let verdict = tally.record(outcome);
            if verdict != Verdict::Undecided {
                return (verdict, i + 1);
            }
        }
        (Verdict::Undecided, rirs.len())
    }

    #[test]
    fn allowed_failures_follow_the_number_of_remotes() {
        let table = [(0, 0), (1, 0), (2, 1), (3, 1), (5, 1), (6, 2), (9, 2)];
        for (remotes, allowed) in table {
            assert_eq!(allowed_failures(remotes), allowed, "{remotes}");
        }
    }

    #[test]
    fn quorum_outcomes() {
        let three = ["ARIN", "RIPE", "APNIC"];
        assert_eq!(run(&three, vec![pass("ARIN"), pass("RIPE")]), (Verdict::Pass, 2), "early pass");
        assert_eq!(run(&three, vec![fail("ARIN"), pass("RIPE"), pass("APNIC")]).0, Verdict::Pass);
        let (verdict, answers) = run(&three, vec![fail("ARIN"), fail("RIPE")]);
        assert_eq!(answers, 2, "early failure");
        let Verdict::Fail(problem) = verdict else { panic!("{verdict:?}") };
        assert_eq!(problem.kind, ErrorKind::Dns);
        assert_eq!(problem.detail, "During secondary validation: no TXT record");
        // Successes from one RIR only never pass.
        let same = ["ARIN", "ARIN", "ARIN"];
        let (verdict, answers) = run(&same, vec![pass("ARIN")]);
        assert!(matches!(verdict, Verdict::Fail(ref p) if p.detail.contains("fewer than two RIRs")), "{verdict:?}");
        assert_eq!(answers, 1);
        // Two remotes: one failure is allowed, but two RIRs must pass, so both must.
        assert!(matches!(run(&["ARIN", "RIPE"], vec![pass("ARIN"), fail("RIPE")]).0, Verdict::Fail(_)));
        assert_eq!(run(&["ARIN", "RIPE"], vec![pass("ARIN"), pass("RIPE")]).0, Verdict::Pass);
        // Six remotes allow two failures.
        let six = ["ARIN", "RIPE", "APNIC", "ARIN", "RIPE", "APNIC"];
        let outcomes = vec![fail("ARIN"), fail("RIPE"), pass("APNIC"), pass("ARIN"), pass("RIPE"), pass("APNIC")];
        assert_eq!(run(&six, outcomes).0, Verdict::Pass);
    }
}
