//! Which backups read only the changed chunks. Pure.
//!
//! Each disk carries at most one persistent dirty bitmap per store, named
//! `vdc-bk.STORE.BACKUP`: the writes since backup BACKUP into STORE. A
//! backup reads incrementally when that bitmap is consistent (QEMU saved
//! it: not killed while it recorded) and the backup it names is still in
//! the store, whole, with the same disk size; otherwise it reads
//! everything and records why. Either way it starts the next bitmap at its
//! point in time, and the other bitmaps of the store go.

use vdc_types::backup::DiskRead;

/// Prefix of vdc's backup bitmaps.
pub const BITMAP_PREFIX: &str = "vdc-bk.";

/// The bitmap that records writes after backup `backup` into `store`.
pub fn bitmap_name(store: &str, backup: &str) -> String {
    format!("{BITMAP_PREFIX}{store}.{backup}")
}

/// A dirty bitmap found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapSeen {
    /// Its name.
    pub name: String,
    /// Saved by QEMU and recording (not left `in-use` by a killed QEMU).
    pub consistent: bool,
}

/// What the base backup offers for this disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseState {
    /// The backup is in the store, whole, with this disk at this size.
    Usable,
    /// Why not.
    Unusable(String),
}

/// The plan for one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskChoice {
    /// How it is read (recorded in the manifest).
    pub read: DiskRead,
    /// The bitmap to read the changes from, if incremental.
    pub bitmap: Option<String>,
    /// Bitmaps of this store to remove before the point in time.
    pub stale: Vec<String>,
}

/// Chooses how to read a disk. `base(id)` tells what backup `id` offers.
pub fn choose(
    store: &str,
    bitmaps: &[BitmapSeen],
    mut base: impl FnMut(&str) -> BaseState,
) -> DiskChoice {
    let prefix = format!("{BITMAP_PREFIX}{store}.");
    let mine: Vec<&BitmapSeen> = bitmaps
        .iter()
        .filter(|b| b.name.starts_with(&prefix))
        .collect();
    let full = |reason: String, stale: Vec<String>| DiskChoice {
        read: DiskRead::Full { reason },
        bitmap: None,
        stale,
    };
    let all: Vec<String> = mine.iter().map(|b| b.name.clone()).collect();
    match mine.as_slice() {
        [] => full(
            "no dirty bitmap of an earlier backup into this store".into(),
            all,
        ),
        [b] if !b.consistent => full(
            format!(
                "dirty bitmap {} is inconsistent (QEMU ended without saving it)",
                b.name
            ),
            all,
        ),
        [b] => {
            let id = &b.name[prefix.len()..];
            match base(id) {
                BaseState::Usable => DiskChoice {
                    read: DiskRead::Incremental {
                        base: id.to_string(),
                        bitmap: b.name.clone(),
                    },
                    bitmap: Some(b.name.clone()),
                    stale: Vec::new(),
                },
                BaseState::Unusable(why) => full(format!("base backup {id}: {why}"), all),
            }
        }
        _ => full(
            format!(
                "{} dirty bitmaps of this store; which one is current is unknown",
                mine.len()
            ),
            all,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(name: &str, consistent: bool) -> BitmapSeen {
        BitmapSeen {
            name: name.into(),
            consistent,
        }
    }

    #[test]
    fn incremental_only_with_one_consistent_bitmap_and_a_usable_base() {
        let ok = |_: &str| BaseState::Usable;
        let c = choose("s1", &[seen("vdc-bk.s1.b7", true), seen("other", true)], ok);
        assert_eq!(c.bitmap.as_deref(), Some("vdc-bk.s1.b7"));
        assert!(matches!(c.read, DiskRead::Incremental { ref base, .. } if base == "b7"));
        assert!(c.stale.is_empty());

        let c = choose("s1", &[seen("vdc-bk.s2.b7", true)], ok);
        assert!(c.bitmap.is_none(), "another store's bitmap");
        let c = choose("s1", &[seen("vdc-bk.s1.b7", false)], ok);
        assert!(matches!(c.read, DiskRead::Full { ref reason } if reason.contains("inconsistent")));
        assert_eq!(c.stale, ["vdc-bk.s1.b7"]);
        let gone = |_: &str| BaseState::Unusable("gone from the store".into());
        let c = choose("s1", &[seen("vdc-bk.s1.b7", true)], gone);
        assert!(matches!(c.read, DiskRead::Full { ref reason } if reason.contains("gone")));
        let c = choose(
            "s1",
            &[seen("vdc-bk.s1.a", true), seen("vdc-bk.s1.b", true)],
            ok,
        );
        assert_eq!(c.stale.len(), 2);
        assert!(c.bitmap.is_none());
    }
}
