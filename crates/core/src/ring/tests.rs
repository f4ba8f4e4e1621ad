use super::*;

fn grow(sizes: &[u16], seed: u64) -> Vec<Ring> {
    let mut members: Vec<(NodeId, Vec<Token>)> = Vec::new();
    let mut weights = BTreeMap::new();
    let mut rings = vec![];
    for (i, w) in sizes.iter().enumerate() {
        let ring = Ring::new(members.clone());
        let node = NodeId(i as u64 + 1);
        let tokens = if std::env::var("RANDTOK").is_ok() {
            (0..*w as u64)
                .map(|k| {
                    Token(
                        ((mix(seed ^ mix(i as u64 * 1000 + k)) as u128) << 64)
                            | mix(k ^ mix(seed + i as u64)) as u128,
                    )
                })
                .collect()
        } else {
            allocate_tokens(&ring, &weights, node, *w, seed.wrapping_add(i as u64))
        };
        members.push((node, tokens));
        weights.insert(node, *w);
        rings.push(Ring::new(members.clone()));
    }
    rings
}

fn replicated(ring: &Ring, n: usize) -> BTreeMap<NodeId, f64> {
    ring.nodes()
        .map(|node| {
            let s: f64 = ring
                .ranges(node, n)
                .iter()
                .map(|r| (r.end.0 - r.start.0) as f64 / RING_SIZE)
                .sum();
            (node, s)
        })
        .collect()
}

#[test]
fn experiment() {
    let mut worst_p = vec![0.0f64; 41];
    let mut worst_r = vec![0.0f64; 41];
    let mut worst_r2 = vec![0.0f64; 41];
    let seeds: u64 = std::env::var("SEEDS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(10);
    let max: usize = std::env::var("MAXN")
        .map(|s| s.parse().unwrap())
        .unwrap_or(20);
    for seed in 0..seeds {
        let rings = grow(&vec![256; max], seed * 7919);
        for (i, ring) in rings.iter().enumerate() {
            let n = i + 1;
            for s in ring.ownership().values() {
                worst_p[n] = worst_p[n].max((s * n as f64 - 1.0).abs());
            }
            if n >= 4 && (n <= 20 || n % 5 == 0) {
                for s in replicated(ring, 3).values() {
                    worst_r[n] = worst_r[n].max((s * n as f64 / 3.0 - 1.0).abs());
                }
                for s in replicated(ring, 2).values() {
                    worst_r2[n] = worst_r2[n].max((s * n as f64 / 2.0 - 1.0).abs());
                }
            }
        }
    }
    for n in 1..=max {
        println!(
            "n={n:2} primary {:.4} r2 {:.4} r3 {:.4}",
            worst_p[n], worst_r2[n], worst_r[n]
        );
    }
}

#[test]
fn experiment_time() {
    let seeds: u64 = std::env::var("SEEDS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(3);
    let max: usize = std::env::var("MAXN")
        .map(|s| s.parse().unwrap())
        .unwrap_or(20);
    let start = std::time::Instant::now();
    for seed in 0..seeds {
        let rings = grow(&vec![256; max], seed * 7919);
        assert_eq!(rings.len(), max);
    }
    println!(
        "grow to {max} x {seeds}: {:?} per growth",
        start.elapsed() / seeds as u32
    );
}
