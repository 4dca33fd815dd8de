//! Replays every saved input under `regressions/<target>/` through its target's checks: each
//! crash the fuzzer ever found stays a test. Runs with plain `cargo test` (no fuzzer needed).

#[test]
fn saved_inputs_still_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut replayed = 0;
    for (target, check) in edge_enrich_fuzz::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().is_some_and(|n| n != ".gitkeep"))
            .collect();
        inputs.sort();
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            eprintln!("{target}: {}", input.display());
            check(&data);
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no regression inputs found under {}",
        root.display()
    );
}
