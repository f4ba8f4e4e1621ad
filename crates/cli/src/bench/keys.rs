//! Which key and which operation a bench client uses next: a seeded SplitMix64
//! stream per client, so a run's key sequence depends only on `--seed`, the client's
//! index and the phase, never on timing.

use super::Workload;

/// One operation on key `bench-{index}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read(u64),
    Write(u64),
}

impl Op {
    pub fn key_index(self) -> u64 {
        match self {
            Op::Read(index) | Op::Write(index) => index,
        }
    }
}

/// The key a bench op touches: `bench-{index}`, ASCII only, so it needs no escaping.
pub fn key_name(index: u64) -> String {
    format!("bench-{index}")
}

/// SplitMix64 (Steele, Lea, Flood 2014): one `u64` of state, passes BigCrush, and
/// any seed (even 0) gives a good stream. Enough for choosing keys; not for secrets.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` by Lemire's multiply-shift; the bias is below
    /// `bound / 2^64`, far under anything a benchmark can see.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        let wide = u128::from(self.next_u64()) * u128::from(bound);
        // The high half of a u64 x u64 product always fits in a u64.
        u64::try_from(wide >> 64).expect("high half of a 128-bit product fits in u64")
    }
}

/// The operations of one client in one phase: keys uniform over `0..keys`.
#[derive(Clone, Debug)]
pub struct OpStream {
    rng: SplitMix64,
    keys: u64,
    workload: Workload,
}

impl OpStream {
    /// Streams for different `(seed, phase, client)` are independent: the three are
    /// mixed through SplitMix64 before seeding.
    pub fn new(seed: u64, phase: u32, client: u32, keys: u64, workload: Workload) -> OpStream {
        assert!(keys > 0);
        let mut mixer = SplitMix64::new(seed);
        let stream_id = (u64::from(phase) << 32) | u64::from(client);
        let client_seed = mixer.next_u64() ^ SplitMix64::new(stream_id).next_u64();
        OpStream {
            rng: SplitMix64::new(client_seed),
            keys,
            workload,
        }
    }

    pub fn next_op(&mut self) -> Op {
        let key = self.rng.below(self.keys);
        match self.workload {
            Workload::Write => Op::Write(key),
            Workload::Read => Op::Read(key),
            Workload::Mixed => {
                if self.rng.next_u64() >> 63 == 0 {
                    Op::Read(key)
                } else {
                    Op::Write(key)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(stream: &mut OpStream, count: usize) -> Vec<Op> {
        (0..count).map(|_| stream.next_op()).collect()
    }

    /// SplitMix64's published first outputs for seed 0, so a change to the mixer
    /// (which would silently change every recorded run's key sequence) fails here.
    #[test]
    fn splitmix_matches_the_reference_sequence() {
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn same_seed_phase_and_client_give_the_same_keys() {
        let mut a = OpStream::new(7, 1, 3, 1000, Workload::Mixed);
        let mut b = OpStream::new(7, 1, 3, 1000, Workload::Mixed);
        assert_eq!(ops(&mut a, 500), ops(&mut b, 500));
    }

    #[test]
    fn clients_phases_and_seeds_get_different_keys() {
        let base = ops(&mut OpStream::new(7, 1, 3, 1_000_000, Workload::Write), 50);
        let other_client = ops(&mut OpStream::new(7, 1, 4, 1_000_000, Workload::Write), 50);
        let other_phase = ops(&mut OpStream::new(7, 2, 3, 1_000_000, Workload::Write), 50);
        let other_seed = ops(&mut OpStream::new(8, 1, 3, 1_000_000, Workload::Write), 50);
        assert_ne!(base, other_client);
        assert_ne!(base, other_phase);
        assert_ne!(base, other_seed);
    }

    #[test]
    fn keys_stay_in_range_and_cover_it_evenly() {
        let keys = 10;
        let mut stream = OpStream::new(1, 0, 0, keys, Workload::Write);
        let mut counts = [0u32; 10];
        for op in ops(&mut stream, 100_000) {
            let index = usize::try_from(op.key_index()).expect("below 10");
            counts[index] += 1;
        }
        // 10_000 expected per key; 5 standard deviations is about ±475.
        for count in counts {
            assert!((9_500..=10_500).contains(&count), "uneven: {counts:?}");
        }
    }

    #[test]
    fn a_single_key_set_always_picks_key_zero() {
        let mut stream = OpStream::new(99, 0, 0, 1, Workload::Read);
        assert!(ops(&mut stream, 100).iter().all(|op| *op == Op::Read(0)));
    }

    #[test]
    fn workloads_pick_the_matching_operations() {
        let writes = ops(&mut OpStream::new(1, 0, 0, 100, Workload::Write), 100);
        assert!(writes.iter().all(|op| matches!(op, Op::Write(_))));
        let reads = ops(&mut OpStream::new(1, 0, 0, 100, Workload::Read), 100);
        assert!(reads.iter().all(|op| matches!(op, Op::Read(_))));
        let mixed = ops(&mut OpStream::new(1, 0, 0, 100, Workload::Mixed), 10_000);
        let read_count = mixed.iter().filter(|op| matches!(op, Op::Read(_))).count();
        assert!((4_500..=5_500).contains(&read_count), "{read_count} reads");
    }

    #[test]
    fn key_names_are_plain_ascii() {
        assert_eq!(key_name(42), "bench-42");
    }
}
