#[test]
fn probe_works() {
    let p = scratch_memtrack::probe();
    eprintln!("{p:?}");
    assert!(p.works, "{}", p.reason);
}
