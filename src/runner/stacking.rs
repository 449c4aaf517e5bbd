//! Which projections of one mixer input share a stacked weight on the GPU
//! (one GEMV launch for all of them in a decode step): the decision alone,
//! apart from the device, so that it is tested without one.

/// What the decision needs to know of a projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Its first stage has a bias (the stacked launch writes bf16 without one).
    pub biased: bool,
    /// It is low-rank: its first stage writes the one bottleneck buffer.
    pub low_rank: bool,
}

/// Per candidate, in order, whether it joins the stack: no bias, at most
/// `max` members (the kernel's output buffers), at most one low-rank member.
pub(crate) fn stack_plan(candidates: &[Candidate], max: usize) -> Vec<bool> {
    let (mut members, mut low_rank) = (0, false);
    candidates
        .iter()
        .map(|c| {
            let joins = !c.biased && members < max && !(low_rank && c.low_rank);
            if joins {
                members += 1;
                low_rank |= c.low_rank;
            }
            joins
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Candidate = Candidate { biased: false, low_rank: false };
    const LOW_RANK: Candidate = Candidate { biased: false, low_rank: true };
    const BIASED: Candidate = Candidate { biased: true, low_rank: false };

    #[test]
    fn glas_five_projections_share_one_weight() {
        assert_eq!(stack_plan(&[FULL, FULL, FULL, FULL, LOW_RANK], 8), vec![true; 5]);
    }

    #[test]
    fn a_biased_projection_keeps_its_own_weight() {
        assert_eq!(stack_plan(&[FULL, BIASED, FULL], 8), vec![true, false, true]);
    }

    #[test]
    fn only_the_first_low_rank_projection_joins() {
        assert_eq!(stack_plan(&[LOW_RANK, FULL, LOW_RANK], 8), vec![true, true, false]);
    }

    #[test]
    fn no_more_members_than_the_kernel_has_buffers() {
        assert_eq!(stack_plan(&[FULL; 4], 3), vec![true, true, true, false]);
        assert_eq!(stack_plan(&[BIASED, FULL], 1), vec![false, true]);
    }
}
