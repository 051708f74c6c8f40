//! Which SCTs suffice: at least `min_scts` of them, from at least `min_operators` distinct log operators. Pure, so
//! the service can ask after every answer whether it may stop waiting.

use std::collections::BTreeSet;

/// One SCT obtained, with the operator of the log that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obtained {
    pub operator: String,
    pub sct: Vec<u8>,
}

/// What suffices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SctPolicy {
    pub min_scts: usize,
    pub min_operators: usize,
}

impl SctPolicy {
    /// The SCTs to embed if `obtained` satisfies the policy: one per operator first, in the order they came, then
    /// others up to `min_scts`. `None` while the policy is not met.
    pub fn select(&self, obtained: &[Obtained]) -> Option<Vec<Vec<u8>>> {
        let mut operators = BTreeSet::new();
        let mut chosen = Vec::new();
        let mut rest = Vec::new();
        for item in obtained {
            if operators.insert(item.operator.as_str()) {
                chosen.push(item.sct.clone());
            } else {
                rest.push(item.sct.clone());
            }
        }
        if operators.len() < self.min_operators {
            return None;
        }
        let missing = self.min_scts.saturating_sub(chosen.len());
        chosen.extend(rest.into_iter().take(missing));
        (chosen.len() >= self.min_scts).then_some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obtained(pairs: &[(&str, u8)]) -> Vec<Obtained> {
        pairs.iter().map(|(operator, sct)| Obtained { operator: (*operator).to_owned(), sct: vec![*sct] }).collect()
    }

    /// A policy, the (operator, SCT byte) pairs obtained in order, and the SCT bytes selected.
    type Case = (SctPolicy, &'static [(&'static str, u8)], Option<Vec<u8>>);

    #[test]
    fn selection_table() {
        let two_two = SctPolicy { min_scts: 2, min_operators: 2 };
        let three_two = SctPolicy { min_scts: 3, min_operators: 2 };
        let cases: [Case; 7] = [
            (two_two, &[], None),
            (two_two, &[("a", 1)], None),
            (two_two, &[("a", 1), ("a", 2)], None),
            (two_two, &[("a", 1), ("b", 2)], Some(vec![1, 2])),
            (two_two, &[("a", 1), ("a", 2), ("b", 3)], Some(vec![1, 3])),
            (three_two, &[("a", 1), ("b", 2)], None),
            (three_two, &[("a", 1), ("a", 2), ("b", 3)], Some(vec![1, 3, 2])),
        ];
        for (policy, pairs, expected) in cases {
            let got = policy.select(&obtained(pairs)).map(|scts| scts.into_iter().map(|s| s[0]).collect::<Vec<_>>());
            assert_eq!(got, expected, "{policy:?} {pairs:?}");
        }
    }
}
