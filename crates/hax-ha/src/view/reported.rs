//! Which unusable values have been logged already: a watched prefix is read
//! again at every change under it, and a bad value must be reported once,
//! not at every read.

use std::collections::BTreeSet;

/// Values reported, by key and modify index: a value written again (even a
/// bad one again) is another value and is reported again.
#[derive(Debug, Default)]
pub(super) struct Reported {
    seen: BTreeSet<(String, u64)>,
}

impl Reported {
    /// Takes the bad values of one read; returns those not reported before.
    /// Values absent from this read are forgotten.
    pub(super) fn update<'a, T>(
        &mut self,
        bad: impl IntoIterator<Item = (&'a str, u64, T)>,
    ) -> Vec<(&'a str, u64, T)> {
        let mut seen = BTreeSet::new();
        let mut new = Vec::new();
        for (key, index, detail) in bad {
            let id = (key.to_owned(), index);
            if !self.seen.contains(&id) {
                new.push((key, index, detail));
            }
            seen.insert(id);
        }
        self.seen = seen;
        new
    }

    /// How many values are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_once_until_it_goes() {
        let mut r = Reported::default();
        assert_eq!(r.update([("a", 1, ()), ("b", 2, ())]).len(), 2);
        assert!(r.update([("a", 1, ()), ("b", 2, ())]).is_empty());
        // Rewritten: a new value.
        assert_eq!(r.update([("a", 3, ()), ("b", 2, ())]), [("a", 3, ())]);
        // Repaired, then broken again at the same index (a restored backup).
        assert!(r.update([("b", 2, ())]).is_empty());
        assert_eq!(r.update([("a", 3, ()), ("b", 2, ())]), [("a", 3, ())]);
        assert_eq!(r.len(), 2);
    }
}
