//! Where a room lives when nobody holds its lease: rendezvous (highest-random-weight) hashing
//! over the live nodes. Every node computes the same answer from the same live set, and a
//! node joining or leaving moves only the rooms that hash highest to it (about 1/N of them).
//! Pure: names in, a name out.

use sha2::{Digest, Sha256};

/// The weight of `node` for `key`: the first 8 bytes of SHA-256(node ‖ 0 ‖ key).
fn weight(node: &str, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0u8]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The node `key` belongs to among `nodes` (ties, which SHA-256 makes vanishingly rare, go to
/// the smaller name); `None` for no nodes.
pub fn owner<'a>(key: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes
        .into_iter()
        .map(|n| (weight(n, key), n))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("!room{i}:example.org")).collect()
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_of_nodes() {
        for r in rooms(50) {
            assert_eq!(owner(&r, ["a", "b", "c"]), owner(&r, ["c", "a", "b"]));
        }
    }

    #[test]
    fn no_nodes_no_owner_one_node_owns_everything() {
        assert_eq!(owner("!r:x", std::iter::empty::<&str>()), None);
        assert_eq!(owner("!r:x", ["solo"]), Some("solo"));
    }

    #[test]
    fn rooms_spread_over_the_nodes() {
        let rs = rooms(3000);
        for n in ["a", "b", "c"] {
            let count = rs
                .iter()
                .filter(|r| owner(r, ["a", "b", "c"]) == Some(n))
                .count();
            assert!((800..1200).contains(&count), "{n} got {count} of 3000");
        }
    }

    #[test]
    fn adding_a_node_moves_only_rooms_to_it() {
        let rs = rooms(3000);
        let mut moved = 0;
        for r in &rs {
            let before = owner(r, ["a", "b", "c"]);
            let after = owner(r, ["a", "b", "c", "d"]);
            if before != after {
                assert_eq!(after, Some("d"), "{r} moved between old nodes");
                moved += 1;
            }
        }
        assert!(
            (600..900).contains(&moved),
            "{moved} of 3000 moved, ~1/4 expected"
        );
    }

    #[test]
    fn removing_a_node_moves_only_its_rooms() {
        for r in rooms(1000) {
            let before = owner(&r, ["a", "b", "c"]);
            let after = owner(&r, ["a", "c"]);
            if before != Some("b") {
                assert_eq!(before, after, "{r} moved although its node stayed");
            }
        }
    }
}
