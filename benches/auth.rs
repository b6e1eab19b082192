//! Criterion benchmark of the token check a call pays with authentication on
//! (`cargo bench --bench auth`): `token/{n}` looks up and verifies a valid token in a file of
//! `n` tokens (SHA-256 of the token, a hash-map lookup by id, a constant-time compare);
//! `right/allowed` is the check of a right (`Principal::check`).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use replog::auth::{Authenticator, Right, Role, TokenFile};

fn token_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("token");
    for n in [1usize, 10_000] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("tokens.yaml");
        let mut f = TokenFile::default();
        let mut last = String::new();
        for i in 0..n {
            let tenants = vec![format!("tenant-{i}")];
            last = f
                .create_token(&format!("p{i}"), Role::Writer, &tenants, "bench")
                .expect("a token")
                .1;
        }
        f.write(&path).expect("the token file");
        let auth = Authenticator::load(&path).expect("load");
        g.bench_with_input(BenchmarkId::from_parameter(n), &last, |b, token| {
            b.iter(|| auth.token(std::hint::black_box(token)).expect("valid"));
        });
    }
    g.finish();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("tokens.yaml");
    let mut f = TokenFile::default();
    let token = f
        .create_token(
            "p",
            Role::Writer,
            &["a".to_owned(), "b".to_owned()],
            "bench",
        )
        .expect("a token")
        .1;
    f.write(&path).expect("the token file");
    let p = Authenticator::load(&path)
        .expect("load")
        .token(&token)
        .expect("valid");
    c.bench_function("right/allowed", |b| {
        b.iter(|| p.check(std::hint::black_box(Right::Write(Some("b")))))
    });
}

criterion_group!(benches, token_check);
criterion_main!(benches);
