//! Calendar dates and times of day in UTC, for the time stamps hax writes
//! into Consul (no time-zone database is needed for UTC).

use std::time::Duration;

/// A moment since the Unix epoch split into UTC calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// Year, e.g. 2024.
    pub year: i64,
    /// Month, 1 to 12.
    pub month: i64,
    /// Day of the month, 1 to 31.
    pub day: i64,
    /// Hour, 0 to 23.
    pub hour: u64,
    /// Minute, 0 to 59.
    pub minute: u64,
    /// Second, 0 to 59.
    pub second: u64,
    /// Microseconds within the second.
    pub micros: u32,
}

impl CivilTime {
    /// The UTC calendar fields of `since_epoch`.
    pub fn from_epoch(since_epoch: Duration) -> Self {
        let secs = since_epoch.as_secs();
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        CivilTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            micros: since_epoch.subsec_micros(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_across_leap_days_and_eras() {
        let epoch = CivilTime::from_epoch(Duration::ZERO);
        assert_eq!((epoch.year, epoch.month, epoch.day), (1970, 1, 1));
        // 2000-02-29 12:34:56.000789 (a leap day of a year divisible by 400).
        let t = CivilTime::from_epoch(Duration::new(951_827_696, 789_000));
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros),
            (2000, 2, 29, 12, 34, 56, 789)
        );
        // 2100-03-01: 2100 is no leap year.
        let t = CivilTime::from_epoch(Duration::from_secs(4_107_542_400));
        assert_eq!((t.year, t.month, t.day), (2100, 3, 1));
    }
}
