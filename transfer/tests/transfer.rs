//! Transfers over real QUIC on loopback with synthetic CRIU-shaped images (no root needed).
//! The real-CRIU round trip and the real-filesystem disk-full case are in `host_transfer.rs`.

mod common;

use std::time::Duration;

use common::*;
use hotspot_protocol::error::ErrorCode;
use hotspot_protocol::manifest::{ChunkHash, ChunkRef, Compression, ImageManifest, ManifestFile, TransferMessage};
use hotspot_transfer::{build_manifest, endpoint, send_dir, ReceiveError, SendError, StoreError, StoreOptions, TrustSet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_then_second_transfer_sends_no_chunk_data() {
    let Setup { src, s, mut rx, ep, tmp: _tmp, .. } = Setup::new(8, 1, StoreOptions::default()).await;

    let first = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    let got = rx.next().await.unwrap();
    assert_same_tree(&src, &got.path);
    assert_eq!(got.peer, s.node_id());
    assert_eq!(first.chunks_sent as usize, first.distinct_chunks);
    assert!(first.raw_bytes_sent >= 8 << 20);

    let second = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    let got2 = rx.next().await.unwrap();
    assert_eq!((second.chunks_sent, second.raw_bytes_sent, second.compressed_bytes_sent), (0, 0, 0), "{second:?}");
    assert_eq!(got2.chunks_received, 0);
    assert_same_tree(&src, &got2.path);
    // Only the manifest and protocol overhead (handshake, MTU probes) crossed the wire.
    assert!(second.wire_bytes < first.wire_bytes / 10, "{} vs {}", second.wire_bytes, first.wire_bytes);
}

/// quinn batches up to 10 packets of the path MTU into one GSO send; above 6.5 KB packets that
/// batch is over UDP's 64 KiB limit and the kernel refuses it. Those silent drops used to cost
/// thousands of retransmissions per GiB and black-hole resets to 1200-byte packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_keeps_jumbo_packets_and_loses_none_on_loopback() {
    let Setup { src, mut rx, ep, tmp: _tmp, .. } = Setup::new(96, 7, StoreOptions::default()).await;
    let report = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    rx.next().await.unwrap();
    assert!(report.path_mtu > 6_550, "path MTU discovery should settle on jumbo packets on loopback: {report:?}");
    // Real drops (a starved receiver overflowing its socket buffer) can happen on a loaded
    // host, but a handful, not the hundreds per 100 MiB the oversized batches cost.
    assert!(report.lost_packets < 20, "{} packets lost sending 96 MiB over loopback: {report:?}", report.lost_packets);
}

/// Identical pages (one chunk, many places) are sent once and written to every place, also in
/// a pages file large enough to be indexed in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_pages_travel_once_and_fill_every_place() {
    let Setup { src, mut rx, ep, tmp: _tmp, .. } = Setup::new(1, 3, StoreOptions::default()).await;
    // 20 MiB (over rebuild::LINK_MIN_BYTES) of pages cycling through 8 distinct contents.
    let pages = 20 * 256;
    let page = hotspot_criu_image::PAGE_SIZE;
    fake_image(&src, &[(0x7f00_0000_0000, pages)], |vaddr| noise((vaddr / page) % 8, page as usize));
    let report = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    let got = rx.next().await.unwrap();
    assert_same_tree(&src, &got.path);
    assert!(report.distinct_chunks < 16, "8 distinct pages plus the small files: {report:?}");
    assert_eq!(report.chunks_sent as usize, report.distinct_chunks, "{report:?}");
    assert!(report.raw_bytes_sent < 1 << 20, "each distinct page travels once: {report:?}");
}

/// Two dumps of one process under `root`: `a`, then `b` after it grew a new run in front
/// (shifting every file offset) and changed 4 pages.
fn grown_image_pair(root: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (root.join("a"), root.join("b"));
    let page = |v: u64| noise(v, 4096);
    fake_image(&a, &[(0x10_0000, 512), (0x40_0000, 512)], page);
    fake_image(&b, &[(0x8_0000, 16), (0x10_0000, 512), (0x40_0000, 512)], |v| if v % (256 * 4096) == 0 { noise(v + 1, 4096) } else { page(v) });
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grown_process_shares_pages_by_virtual_address() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = grown_image_pair(tmp.path());
    let (r, s) = (key(1), key(2));
    let mut rx = Receiver::start(&r, &[&s], &tmp.path().join("rx"), StoreOptions::default()).await;
    let ep = sender_endpoint(&s, &r, rx.addr);
    send_dir(&ep, rx.addr, &a, send_opts(), None).await.unwrap();
    rx.next().await.unwrap();
    let second = send_dir(&ep, rx.addr, &b, send_opts(), None).await.unwrap();
    let got = rx.next().await.unwrap();
    assert_same_tree(&b, &got.path);
    let image = second.image_bytes;
    // 16 new pages + 4 changed pages (+ their chunk neighbours) + the small non-page files.
    assert!(second.raw_bytes_sent < image / 20, "sent {} of {image}", second.raw_bytes_sent);
}

/// Every page of a CRIU image directory by virtual address, following `parent/` for runs
/// flagged `PE_PARENT` the way CRIU's restore does.
fn resolve_pages(dir: &std::path::Path) -> std::collections::BTreeMap<u64, Vec<u8>> {
    use hotspot_criu_image::{parse_pagemap, PAGE_SIZE, PE_PARENT};
    let pm = parse_pagemap(&std::fs::read(dir.join("pagemap-1.img")).unwrap()).unwrap();
    let pages = std::fs::read(dir.join(format!("pages-{}.img", pm.pages_id))).unwrap();
    let parent = dir.join("parent");
    let from_parent = if parent.is_dir() { resolve_pages(&parent) } else { Default::default() };
    let (mut out, mut at) = (std::collections::BTreeMap::new(), 0usize);
    for run in &pm.runs {
        for p in 0..run.nr_pages {
            let vaddr = run.vaddr + p * PAGE_SIZE;
            let page = if run.in_pages_file() {
                at += PAGE_SIZE as usize;
                pages[at - PAGE_SIZE as usize..at].to_vec()
            } else {
                assert!(run.flags & PE_PARENT != 0, "run {run:?} is neither here nor in the parent");
                from_parent.get(&vaddr).unwrap_or_else(|| panic!("{vaddr:#x} missing in the parent")).clone()
            };
            out.insert(vaddr, page);
        }
    }
    assert_eq!(at, pages.len(), "the pages file holds exactly the present runs");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_image_is_rebuilt_on_its_parent_with_only_changed_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = grown_image_pair(tmp.path());
    let parent: std::sync::Arc<std::sync::Mutex<Option<(std::path::PathBuf, hotspot_transfer::ManifestId)>>> = Default::default();
    let lookup = parent.clone();
    let (r, s) = (key(1), key(2));
    let mut rx = Receiver::start_with(&r, &[&s], &tmp.path().join("rx"), StoreOptions::default(), move |o| {
        o.parent = Some(hotspot_transfer::ParentLookup(std::sync::Arc::new(move |label| if label == "final" { lookup.lock().unwrap().clone() } else { None })));
    })
    .await;
    let ep = sender_endpoint(&s, &r, rx.addr);
    send_dir(&ep, rx.addr, &a, send_opts(), None).await.unwrap();
    let first = rx.next().await.unwrap();
    *parent.lock().unwrap() = Some((first.path.clone(), first.manifest_id));
    let opts = hotspot_transfer::SendOptions { label: "final".into(), ..send_opts() };
    send_dir(&ep, rx.addr, &b, opts, None).await.unwrap();
    let got = rx.next().await.unwrap();

    assert!(got.path.join("parent").is_dir() && !first.path.exists(), "the first image moved into the final one as its parent");
    let written = std::fs::metadata(got.path.join("pages-1.img")).unwrap().len();
    assert_eq!(written, 20 * 4096, "only the 16 new and 4 changed pages are written again");
    assert_eq!(resolve_pages(&got.path), resolve_pages(&b), "every page resolves to the final dump's bytes");
    for f in ["core-1.img", "inventory.img"] {
        assert_eq!(std::fs::read(got.path.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f}");
    }
    // Without a parent the same image is rebuilt in full, byte for byte.
    *parent.lock().unwrap() = None;
    let opts = hotspot_transfer::SendOptions { label: "final".into(), ..send_opts() };
    std::fs::remove_dir_all(&got.path).unwrap();
    send_dir(&ep, rx.addr, &b, opts, None).await.unwrap();
    assert_same_tree(&b, &rx.next().await.unwrap().path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pages_file_is_written_once_and_indexed_in_place() {
    use std::os::unix::fs::MetadataExt;
    let setup = Setup::new(40, 12, StoreOptions::default()).await;
    let packs = setup.rx_root().join("store/packs");
    let Setup { src, mut rx, ep, tmp: _tmp, .. } = setup;
    send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    let got = rx.next().await.unwrap();
    assert_same_tree(&src, &got.path);
    // The received pages file is also the store's pack: one inode, two names, written once.
    let largest = |d: &std::path::Path| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).max_by_key(|p| p.metadata().unwrap().len()).unwrap();
    let pages = std::fs::metadata(largest(&got.path)).unwrap();
    assert_eq!(pages.nlink(), 2, "pages file linked into the store");
    let pack = std::fs::read_dir(&packs).unwrap().map(|e| e.unwrap().path()).find(|p| p.metadata().unwrap().ino() == pages.ino()).expect("a pack is the pages file");

    // Deleting the image keeps its chunks in the store: sending it again moves no chunk data.
    std::fs::remove_dir_all(&got.path).unwrap();
    let again = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    assert_eq!(again.chunks_sent, 0);
    assert_same_tree(&src, &rx.next().await.unwrap().path);

    // A byte flipped in that pack is caught on the next rebuild and only that chunk travels.
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let third = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    assert_eq!(third.chunks_sent, 1, "only the corrupted chunk travels again");
    assert_same_tree(&src, &rx.next().await.unwrap().path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunk_is_rejected_and_fetched_again() {
    let Setup { src, mut rx, ep, tmp: _tmp, .. } = Setup::new(4, 3, StoreOptions::default()).await;
    let opts = hotspot_transfer::SendOptions { fault_corrupt_chunks: 3, ..send_opts() };
    let report = send_dir(&ep, rx.addr, &src, opts, None).await.unwrap();
    let got = rx.next().await.unwrap();
    assert_eq!(report.rejected, 3);
    assert_eq!(got.rejected, 3);
    assert_same_tree(&src, &got.path);
    assert_eq!(rx.store.verify_all().unwrap().1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_corrupted_at_rest_is_fetched_again() {
    let setup = Setup::new(2, 4, StoreOptions::default()).await;
    let rx_root = setup.rx_root();
    let Setup { src, r, s, mut rx, ep, tmp: _tmp } = setup;
    send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    rx.next().await.unwrap();
    rx.stop().await;
    // Flip one byte in the middle of a pack: exactly one stored chunk is now bad.
    let pack = std::fs::read_dir(rx_root.join("store/packs")).unwrap().map(|e| e.unwrap().path()).find(|p| p.metadata().unwrap().len() > 0).unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&pack, bytes).unwrap();

    let mut rx = Receiver::start(&r, &[&s], &rx_root, StoreOptions::default()).await;
    let report = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    let got = rx.next().await.unwrap();
    assert_eq!(report.chunks_sent, 1, "only the corrupted chunk travels again");
    assert_same_tree(&src, &got.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_client_is_refused_before_any_data() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fake_image_mib(&src, 1, 5);
    let (r, trusted, stranger) = (key(1), key(2), key(3));
    let mut rx = Receiver::start(&r, &[&trusted], &tmp.path().join("rx"), StoreOptions::default()).await;
    // The stranger trusts the receiver; the receiver does not trust the stranger.
    let ep = sender_endpoint(&stranger, &r, rx.addr);
    let err = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap_err();
    assert!(matches!(err, SendError::Connect { .. } | SendError::Connection(_) | SendError::Remote { .. }), "{err:?}");
    assert!(matches!(rx.next().await, Err(ReceiveError::Handshake { .. })));
    assert!(rx.store.manifests().unwrap().is_empty(), "nothing registered");
    assert_eq!(rx.store.disk_bytes(), 0, "no chunk stored");

    // A sender that does not trust the receiver's key refuses it too.
    let wrong = endpoint::sender(&trusted, TrustSet::new([stranger.node_id()]), None, rx.addr).unwrap();
    let err = send_dir(&wrong, rx.addr, &src, send_opts(), None).await.unwrap_err();
    assert!(matches!(err, SendError::Connect { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connection_and_restarted_receiver_resume_with_only_missing_chunks() {
    let setup = Setup::new(48, 6, StoreOptions::default()).await;
    let rx_root = setup.rx_root();
    let Setup { src, r, s, mut rx, ep, tmp: _tmp } = setup;
    let opts = hotspot_transfer::SendOptions { streams: 1, batch_bytes: 64 * 1024, ..send_opts() };
    let send = send_dir(&ep, rx.addr, &src, opts, None);
    tokio::pin!(send);
    // Kill the connection once the receiver has stored a few MiB.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    loop {
        tokio::select! {
            r = &mut send => panic!("transfer finished before it could be killed: {r:?}"),
            _ = tick.tick() => if rx.store.disk_bytes() > 4 << 20 { break },
        }
    }
    ep.close(0u32.into(), b"killed");
    drop(send);
    assert!(rx.next().await.is_err(), "receiver sees the transfer fail");
    rx.stop().await; // the receiving process dies too

    // Counted after the restart: the receiver commits what it verified while it winds down.
    let mut rx = Receiver::start(&r, &[&s], &rx_root, StoreOptions::default()).await;
    let manifest = build_manifest(&src, "test", &Default::default()).unwrap();
    let distinct: std::collections::HashSet<_> = manifest.chunks().map(|c| c.hash).collect();
    let present = distinct.iter().filter(|h| rx.store.has(h).unwrap()).count();
    assert!(present > 0 && present < distinct.len(), "{present} of {} chunks survived the restart", distinct.len());
    let ep = sender_endpoint(&s, &r, rx.addr);
    let report = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap();
    let got = rx.next().await.unwrap();
    assert_eq!(report.chunks_sent as usize, distinct.len() - present, "only the missing chunks travel");
    assert_same_tree(&src, &got.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_limit_gives_clear_error_and_consistent_store() {
    let limit = StoreOptions { max_bytes: Some(3 << 20), ..Default::default() };
    let Setup { src, mut rx, ep, tmp: _tmp, .. } = Setup::new(8, 7, limit).await;
    let err = send_dir(&ep, rx.addr, &src, send_opts(), None).await.unwrap_err();
    match &err {
        SendError::Remote { code, message } => {
            assert_eq!(*code, ErrorCode::DiskFull);
            assert!(message.contains("disk full"), "{message}");
        }
        other => panic!("expected a disk-full refusal, got {other:?}"),
    }
    let rx_err = rx.next().await.unwrap_err();
    assert!(matches!(rx_err, ReceiveError::Store(StoreError::DiskFull { .. })), "{rx_err:?}");
    assert!(rx.store.disk_bytes() <= 3 << 20);
    let (checked, corrupt) = rx.store.verify_all().unwrap();
    assert!(checked > 0 && corrupt == 0, "{checked} checked, {corrupt} corrupt");
    assert!(rx.store.manifests().unwrap().iter().all(|m| !m.complete));
    assert!(!rx.images.exists() || std::fs::read_dir(&rx.images).unwrap().next().is_none(), "no partial image left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_reclaims_released_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fake_image_mib(&a, 4, 8);
    fake_image_mib(&b, 4, 9);
    let (r, s) = (key(1), key(2));
    let mut rx = Receiver::start(&r, &[&s], &tmp.path().join("rx"), StoreOptions { pack_bytes: 1 << 20, ..Default::default() }).await;
    let ep = sender_endpoint(&s, &r, rx.addr);
    send_dir(&ep, rx.addr, &a, send_opts(), None).await.unwrap();
    let ga = rx.next().await.unwrap();
    send_dir(&ep, rx.addr, &b, send_opts(), None).await.unwrap();
    let gb = rx.next().await.unwrap();
    let before = rx.store.disk_bytes();
    assert!(rx.store.release(&ga.manifest_id).unwrap());
    let report = rx.store.gc().unwrap();
    assert!(report.chunks_removed > 0 && report.bytes_freed >= 3 << 20, "{report:?}");
    assert!(rx.store.disk_bytes() < before);
    // The other image still rebuilds from what is left.
    let dest = tmp.path().join("rebuilt");
    let manifest = rx.store.manifest(&gb.manifest_id).unwrap().unwrap();
    hotspot_transfer::rebuild::rebuild(&rx.store, &manifest, &dest).unwrap();
    assert_same_tree(&b, &dest);
}

/// Opens a raw trusted connection to the receiver, for feeding it bad input.
async fn raw_connection(s: &hotspot_transfer::identity::NodeKey, r: &hotspot_transfer::identity::NodeKey, rx: &Receiver) -> quinn::Connection {
    let ep = sender_endpoint(s, r, rx.addr);
    ep.connect(rx.addr, hotspot_transfer::tls::SERVER_NAME).unwrap().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_refused_without_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, s) = (key(1), key(2));
    let mut rx = Receiver::start(&r, &[&s], &tmp.path().join("rx"), StoreOptions::default()).await;
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff; 3],
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        [&8u32.to_be_bytes()[..], b"HM\x00\x01notcbor"].concat(),
        [&6u32.to_be_bytes()[..], b"HM\x00\x09\xa0\xa0"].concat(),
        noise(11, 5000),
    ];
    for bytes in garbage {
        let conn = raw_connection(&s, &r, &rx).await;
        let (mut tx, _rx) = conn.open_bi().await.unwrap();
        tx.write_all(&bytes).await.unwrap();
        let _ = tx.finish();
        let err = rx.next().await.unwrap_err();
        assert!(matches!(err, ReceiveError::Frame(_) | ReceiveError::Protocol(_)), "{err:?}");
    }
    // A manifest that tries to escape the image directory.
    let evil = ImageManifest { label: "x".into(), files: vec![ManifestFile { path: "../escape".into(), mode: 0o644, size: 1, chunks: vec![ChunkRef { hash: ChunkHash([1; 32]), len: 1 }] }] };
    let conn = raw_connection(&s, &r, &rx).await;
    let (mut tx, _rx) = conn.open_bi().await.unwrap();
    // (Framing does not validate: a hostile sender's manifest arrives as it was written.)
    hotspot_transfer::framing::write_frame(&mut tx, &TransferMessage::Offer { transfer_id: [0; 16], manifest: evil }).await.unwrap();
    assert!(matches!(rx.next().await.unwrap_err(), ReceiveError::Frame(_)));
    assert!(!tmp.path().join("escape").exists());

    // A chunk nobody asked for on a data stream.
    let src = tmp.path().join("src");
    fake_image_mib(&src, 1, 12);
    let manifest = build_manifest(&src, "t", &Default::default()).unwrap();
    let conn = raw_connection(&s, &r, &rx).await;
    let (mut tx, mut ctl_rx) = conn.open_bi().await.unwrap();
    hotspot_transfer::framing::write_frame(&mut tx, &TransferMessage::Offer { transfer_id: [0; 16], manifest }).await.unwrap();
    let _want = hotspot_transfer::framing::read_frame::<_, TransferMessage>(&mut ctl_rx, 64 << 20).await.unwrap();
    let mut data = conn.open_uni().await.unwrap();
    let bogus = TransferMessage::ChunkBatch { chunks: vec![ChunkRef { hash: ChunkHash([9; 32]), len: 4 }], compressed_len: 4, compression: Compression::None };
    // The receiver may refuse on the header alone and close before the payload is written.
    let _ = hotspot_transfer::framing::write_frame(&mut data, &bogus).await;
    let _ = data.write_all(b"abcd").await;
    assert!(matches!(rx.next().await.unwrap_err(), ReceiveError::Protocol(_)));

    // After all that, the receiver still serves a good transfer.
    let ep = sender_endpoint(&s, &r, rx.addr);
    tokio::time::timeout(Duration::from_secs(30), send_dir(&ep, rx.addr, &src, send_opts(), None)).await.unwrap().unwrap();
    assert_same_tree(&src, &rx.next().await.unwrap().path);
}
