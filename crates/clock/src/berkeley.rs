//! Berkeley's algorithm, the master's side: from estimates of each slave's offset, a
//! fault-tolerant average, and the correction each process (the master included) applies.

use crate::time::Estimate;

/// The outcome of one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Round<Id> {
    /// The agreed time, as an offset from the master's clock: the average of the offsets
    /// that were not outliers (the master's own, 0, included).
    pub average_ns: i64,
    /// What the master adds to its clock.
    pub master_correction_ns: i64,
    /// What each slave adds to its clock, with whether its offset counted in the average.
    pub slaves: Vec<SlaveCorrection<Id>>,
}

/// One slave's part of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaveCorrection<Id> {
    /// The slave.
    pub id: Id,
    /// Its clock minus the master's, as estimated.
    pub offset_ns: i64,
    /// What it adds to its clock.
    pub correction_ns: i64,
    /// False if its offset was an outlier, left out of the average (it is corrected all
    /// the same).
    pub counted: bool,
}

/// Computes one round from the slaves' offsets (slave minus master).
///
/// Fault tolerance: the median of all offsets (the master's 0 included) is found, and only
/// offsets within `threshold_ns` of it are averaged, so a clock that is far off — or a
/// slave that lies — cannot drag everyone else with it. The seed's master averaged the
/// master-minus-slave differences and left its own clock out; here every clock, the
/// master's included, moves to the same average.
pub fn round<Id: Clone>(slaves: &[(Id, Estimate)], threshold_ns: i64) -> Round<Id> {
    let mut all: Vec<i64> = slaves.iter().map(|(_, e)| e.offset_ns).collect();
    all.push(0);
    all.sort_unstable();
    let median = all[all.len() / 2];
    let counted = |offset: i64| (offset - median).abs() <= threshold_ns;
    let included: Vec<i64> = all.iter().copied().filter(|o| counted(*o)).collect();
    let average_ns = if included.is_empty() {
        0
    } else {
        (included.iter().map(|&o| i128::from(o)).sum::<i128>() / included.len() as i128) as i64
    };
    Round {
        average_ns,
        master_correction_ns: average_ns,
        slaves: slaves
            .iter()
            .map(|(id, e)| SlaveCorrection {
                id: id.clone(),
                offset_ns: e.offset_ns,
                correction_ns: average_ns - e.offset_ns,
                counted: counted(e.offset_ns),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(offset_ns: i64) -> Estimate {
        Estimate {
            offset_ns,
            bound_ns: 0,
            rtt_ns: 0,
        }
    }

    #[test]
    fn everyone_moves_to_the_average_and_outliers_do_not_count() {
        let ms = 1_000_000;
        let slaves = [
            ("a", est(10 * ms)),
            ("b", est(-20 * ms)),
            ("liar", est(3_600_000 * ms)),
        ];
        let r = round(&slaves, 100 * ms);
        // Average of 0, +10 and -20 ms; the liar's hour is left out.
        assert_eq!(r.average_ns, -10 * ms / 3);
        assert_eq!(r.master_correction_ns, r.average_ns);
        let liar = &r.slaves[2];
        assert!(!liar.counted);
        // After correction, every clock reads the same.
        for s in &r.slaves {
            assert_eq!(s.offset_ns + s.correction_ns, r.average_ns);
        }
        assert!(r.slaves[0].counted && r.slaves[1].counted);
    }

    #[test]
    fn a_master_alone_keeps_its_time() {
        let r = round::<&str>(&[], 1);
        assert_eq!((r.average_ns, r.master_correction_ns), (0, 0));
    }
}
