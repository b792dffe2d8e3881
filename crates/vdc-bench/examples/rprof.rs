use std::sync::atomic::AtomicBool;
use std::time::Instant;
use vdc_backup::session::{write_disk, DiskPlan, FileDisk};
fn dc() { nix::unistd::sync(); std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap(); }
fn main() {
    let w = std::path::PathBuf::from("/var/tmp/bkbench/rprof");
    let _ = std::fs::remove_dir_all(&w);
    std::fs::create_dir_all(&w).unwrap();
    let size = 512u64 << 20;
    let img = w.join("a.raw");
    vdc_bench::backup::image::write_image(&img, size).unwrap();
    let key = vdc_backup::key::StoreKey::from_bytes(&[3; 32]);
    let store = vdc_backup::Store::open_or_init(&w.join("s"), Some(key)).unwrap();
    let mut src = FileDisk(std::fs::File::open(&img).unwrap());
    dc();
    let t = Instant::now();
    let (index, _) = write_disk(&store, DiskPlan { name: "d".into(), size, source: &mut src, changed: None, read: vdc_types::backup::DiskRead::Full { reason: "x".into() } }, &AtomicBool::new(false), &|_| {}).unwrap();
    println!("backup {:?}", t.elapsed());
    dc();
    let t = Instant::now();
    for n in index.chunks.iter().flatten() { let _ = std::fs::read(store.chunk_path(n)).unwrap(); }
    println!("read chunk files cold {:?}", t.elapsed());
    let t = Instant::now();
    for n in index.chunks.iter().flatten() { let _ = store.get_chunk(n).unwrap(); }
    println!("get_chunk warm, 1 thread {:?}", t.elapsed());
    for th in [2usize, 4] {
        dc();
        let out = w.join(format!("r{th}.raw"));
        let t = Instant::now();
        vdc_backup::restore::restore_raw(&store, &index, size, &out, th, &AtomicBool::new(false), &|_| {}).unwrap();
        println!("restore {th} threads (with sync_all) {:?}", t.elapsed());
        std::fs::remove_file(&out).unwrap();
    }
    std::fs::remove_dir_all(&w).unwrap();
}
