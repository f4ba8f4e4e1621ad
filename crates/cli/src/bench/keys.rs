//! Which key and which operation a bench client uses next: a seeded SplitMix64
//! stream per client, so a run's key sequence depends only on `--seed`, the client's
//! index and the phase, never on timing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Distribution, Workload};

/// One operation on key `bench-{index}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read(u64),
    Write(u64),
    /// Read, then write back with the version read (YCSB F's read-modify-write):
    /// one op, timed from the read to the write's answer.
    Update(u64),
}

impl Op {
    pub fn key_index(self) -> u64 {
        match self {
            Op::Read(index) | Op::Write(index) | Op::Update(index) => index,
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

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record
/// synthetic databases", as in YCSB's `ZipfianGenerator`), precomputed once for
/// `n` keys: ranks near 0 are the hot ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

/// YCSB's default skew.
pub const ZIPF_THETA: f64 = 0.99;
/// Most keys a zipfian run may have: precomputing ζ(n) costs n powers.
pub const MAX_ZIPF_KEYS: u64 = 100_000_000;

impl Zipf {
    pub fn new(n: u64, theta: f64) -> Zipf {
        assert!(n > 0 && n <= MAX_ZIPF_KEYS);
        let zeta = |count: u64| {
            (1..=count)
                .map(|i| 1.0 / (i as f64).powf(theta))
                .sum::<f64>()
        };
        let zeta_n = zeta(n);
        let zeta_2 = zeta(2.min(n));
        let eta = if n <= 2 {
            0.0
        } else {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        };
        Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
        }
    }

    /// A rank in `0..n`.
    fn rank(&self, rng: &mut SplitMix64) -> u64 {
        // 53 random bits as a float in [0, 1).
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }

    /// A key index in `0..n`: a rank, scrambled (FNV-1a) so the hot keys are spread
    /// over the ring instead of being `bench-0`, `bench-1`, ...
    fn key(&self, rng: &mut SplitMix64) -> u64 {
        let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
        for byte in self.rank(rng).to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        }
        hash % self.n
    }
}

/// How keys are drawn (precomputed where it matters).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyChoice {
    Uniform,
    Zipfian(Zipf),
    /// YCSB's `latest`: a zipfian rank counted back from the newest key written.
    Latest(Zipf),
}

impl KeyChoice {
    pub fn new(distribution: Distribution, keys: u64) -> KeyChoice {
        match distribution {
            Distribution::Uniform => KeyChoice::Uniform,
            Distribution::Zipfian => KeyChoice::Zipfian(Zipf::new(keys, ZIPF_THETA)),
            Distribution::Latest => KeyChoice::Latest(Zipf::new(keys, ZIPF_THETA)),
        }
    }
}

/// Which keys exist: `bench-0 .. bench-{count-1}`. Starts at `--keys`; YCSB D's
/// inserts take the next number, shared by every client and phase of a run. As in
/// YCSB, reads see a key only once every insert up to it was answered, so a read
/// never races the insert of the key it reads.
#[derive(Clone, Debug)]
pub struct KeyCount(Arc<Counted>);

#[derive(Debug)]
struct Counted {
    /// What `get` answers, kept by the insert calls: every op reads it, so it is
    /// one atomic load rather than the lock.
    readable: AtomicU64,
    inserts: Mutex<Inserts>,
}

#[derive(Debug)]
struct Inserts {
    /// The number the next insert takes.
    next: u64,
    /// Inserts handed out and not answered yet.
    pending: BTreeSet<u64>,
}

/// Equal when they count the same keys now (`Plan`'s tests compare plans).
impl PartialEq for KeyCount {
    fn eq(&self, other: &KeyCount) -> bool {
        self.get() == other.get()
    }
}

impl KeyCount {
    pub fn new(keys: u64) -> KeyCount {
        KeyCount(Arc::new(Counted {
            readable: AtomicU64::new(keys),
            inserts: Mutex::new(Inserts {
                next: keys,
                pending: BTreeSet::new(),
            }),
        }))
    }

    /// Keys below this one exist (or their insert failed): reads choose among them.
    pub fn get(&self) -> u64 {
        self.0.readable.load(Ordering::Acquire)
    }

    /// Runs `change` on the inserts under the lock, then publishes what reads see.
    fn update<T>(&self, change: impl FnOnce(&mut Inserts) -> T) -> T {
        let mut inserts = self
            .0
            .inserts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = change(&mut inserts);
        let readable = inserts.pending.first().copied().unwrap_or(inserts.next);
        self.0.readable.store(readable, Ordering::Release);
        result
    }

    /// The index of a new key, pending until `answered`.
    fn insert(&self) -> u64 {
        self.update(|inserts| {
            let index = inserts.next;
            inserts.next += 1;
            inserts.pending.insert(index);
            index
        })
    }

    /// The insert of `index` was answered (written or failed).
    pub fn answered(&self, index: u64) {
        self.update(|inserts| inserts.pending.remove(&index));
    }
}

/// The operations of one client in one phase.
#[derive(Clone, Debug)]
pub struct OpStream {
    rng: SplitMix64,
    /// Keys written so far (grows with YCSB D's inserts).
    count: KeyCount,
    workload: Workload,
    choice: KeyChoice,
}

impl OpStream {
    /// Streams for different `(seed, phase, client)` are independent: the three are
    /// mixed through SplitMix64 before seeding.
    #[cfg(test)]
    pub fn new(seed: u64, phase: u32, client: u32, keys: u64, workload: Workload) -> OpStream {
        let choice = KeyChoice::Uniform;
        OpStream::with_choice(seed, phase, client, KeyCount::new(keys), workload, choice)
    }

    pub fn with_choice(
        seed: u64,
        phase: u32,
        client: u32,
        count: KeyCount,
        workload: Workload,
        choice: KeyChoice,
    ) -> OpStream {
        assert!(count.get() > 0);
        let mut mixer = SplitMix64::new(seed);
        let stream_id = (u64::from(phase) << 32) | u64::from(client);
        let client_seed = mixer.next_u64() ^ SplitMix64::new(stream_id).next_u64();
        OpStream {
            rng: SplitMix64::new(client_seed),
            count,
            workload,
            choice,
        }
    }

    /// `op` was answered: if it was one of YCSB D's inserts, reads may pick its key.
    pub fn answered(&self, index: u64) {
        if self.workload == Workload::YcsbD {
            self.count.answered(index);
        }
    }

    pub fn next_op(&mut self) -> Op {
        if self.workload == Workload::YcsbD
            && self.rng.below(1000) >= self.workload.reads_per_mille()
        {
            return Op::Write(self.count.insert());
        }
        let key = match &self.choice {
            KeyChoice::Uniform => self.rng.below(self.count.get()),
            KeyChoice::Zipfian(zipf) => zipf.key(&mut self.rng),
            KeyChoice::Latest(zipf) => {
                let newest = self.count.get().saturating_sub(1);
                newest.saturating_sub(zipf.rank(&mut self.rng))
            }
        };
        match self.workload {
            // Inserts were drawn above; YCSB E never gets here (`Plan` refuses it).
            Workload::YcsbD | Workload::YcsbE => Op::Read(key),
            Workload::Write => Op::Write(key),
            Workload::Read => Op::Read(key),
            Workload::Mixed => {
                if self.rng.next_u64() >> 63 == 0 {
                    Op::Read(key)
                } else {
                    Op::Write(key)
                }
            }
            Workload::YcsbF => {
                if self.rng.below(1000) < self.workload.reads_per_mille() {
                    Op::Read(key)
                } else {
                    Op::Update(key)
                }
            }
            Workload::YcsbA | Workload::YcsbB | Workload::YcsbC => {
                if self.rng.below(1000) < self.workload.reads_per_mille() {
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

    /// Zipfian keys stay in range, are skewed as YCSB's (θ = 0.99: the hottest key
    /// takes a few percent of all ops, the top 1 % of keys far more than 1 %), and
    /// the hot keys are scrambled (not just the lowest indices).
    #[test]
    fn zipfian_keys_are_skewed_in_range_and_scrambled() {
        let keys = 10_000;
        let choice = KeyChoice::new(Distribution::Zipfian, keys);
        let count = KeyCount::new(keys);
        let mut stream = OpStream::with_choice(1, 2, 3, count, Workload::YcsbC, choice);
        let mut counts = vec![0u32; keys as usize];
        let draws = 200_000;
        for _ in 0..draws {
            let op = stream.next_op();
            assert!(matches!(op, Op::Read(_)), "YCSB C only reads");
            counts[op.key_index() as usize] += 1;
        }
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top = f64::from(sorted[0]) / f64::from(draws);
        let top_percent: u32 = sorted[..100].iter().sum();
        assert!((0.02..0.2).contains(&top), "the hottest key takes {top}");
        assert!(
            f64::from(top_percent) / f64::from(draws) > 0.3,
            "the hottest 1 % take {top_percent} of {draws}"
        );
        let hottest = counts.iter().position(|count| *count == sorted[0]).unwrap();
        assert_ne!(hottest, 0, "scrambled: the hot key is not bench-0");
        // Uniform for comparison: no key far above its share.
        let mut uniform = OpStream::new(1, 2, 3, keys, Workload::Read);
        let mut counts = vec![0u32; keys as usize];
        for _ in 0..draws {
            counts[uniform.next_op().key_index() as usize] += 1;
        }
        assert!(counts.iter().all(|count| *count < 100));
    }

    /// YCSB A, B and F mix reads and updates 50/50, 95/5 and 50/50 (F's updates
    /// are read-modify-writes).
    #[test]
    fn ycsb_workloads_mix_reads_and_updates() {
        let mut f = OpStream::new(9, 2, 0, 1000, Workload::YcsbF);
        assert!((0..100).all(|_| !matches!(f.next_op(), Op::Write(_))));
        for (workload, reads) in [
            (Workload::YcsbA, 0.5),
            (Workload::YcsbB, 0.95),
            (Workload::YcsbF, 0.5),
        ] {
            let mut stream = OpStream::new(9, 2, 0, 1000, workload);
            let count = (0..20_000)
                .filter(|_| matches!(stream.next_op(), Op::Read(_)))
                .count();
            let share = count as f64 / 20_000.0;
            assert!((share - reads).abs() < 0.02, "{workload:?}: {share}");
        }
    }

    /// YCSB D: 5 % inserts of new keys (numbered after every key so far, shared by
    /// all clients), 95 % reads skewed to the newest keys.
    #[test]
    fn ycsb_d_inserts_new_keys_and_reads_the_latest() {
        let keys = 10_000;
        let count = KeyCount::new(keys);
        let choice = KeyChoice::new(Distribution::Latest, keys);
        let mut a = OpStream::with_choice(1, 2, 0, count.clone(), Workload::YcsbD, choice);
        let mut b = OpStream::with_choice(1, 2, 1, count.clone(), Workload::YcsbD, choice);
        let mut inserted = Vec::new();
        let mut recent_reads = 0;
        let draws = 40_000;
        for index in 0..draws {
            let stream = if index % 2 == 0 { &mut a } else { &mut b };
            let newest_before = count.get();
            match stream.next_op() {
                Op::Write(key) => {
                    inserted.push(key);
                    count.answered(key);
                }
                Op::Read(key) => {
                    assert!(key < newest_before, "read {key} of {newest_before}");
                    recent_reads += u32::from(key + 100 >= newest_before);
                }
                Op::Update(_) => panic!("YCSB D has no read-modify-writes"),
            }
        }
        let share = inserted.len() as f64 / f64::from(draws);
        assert!((share - 0.05).abs() < 0.01, "{share} inserts");
        // Inserts are the next numbers, once each, across both clients.
        let expected: Vec<u64> = (keys..keys + inserted.len() as u64).collect();
        assert_eq!(inserted, expected);
        assert_eq!(count.get(), keys + inserted.len() as u64);
        // θ = 0.99 over 10,000 keys: the newest 100 take about half the reads.
        let reads = f64::from(draws) - inserted.len() as f64;
        assert!(
            f64::from(recent_reads) / reads > 0.4,
            "{recent_reads} of {reads}"
        );
    }

    /// A key whose insert is not answered yet is never read, nor any key after it.
    #[test]
    fn reads_wait_for_the_inserts_before_them() {
        let count = KeyCount::new(10);
        let first = count.insert();
        let second = count.insert();
        assert_eq!((first, second), (10, 11));
        assert_eq!(count.get(), 10);
        count.answered(second);
        assert_eq!(count.get(), 10, "11 is answered but 10 is not");
        count.answered(first);
        assert_eq!(count.get(), 12);
    }
}
