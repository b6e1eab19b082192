//! The shipped configurations load, and `cluster/local-3/` is the cluster `replog dev` starts.

use clap::Parser;
use replog::cli::{Cli, Command};
use replog::config::{Config, FlagOverrides};

fn dev_node_config(id: u64) -> replog::node::NodeConfig {
    let dev = Cli::try_parse_from(["replog", "dev"]).unwrap();
    let Command::Dev(dev) = dev.command else {
        unreachable!()
    };
    let mut argv = vec!["replog".to_owned()];
    argv.extend(replog::cli::serve::dev_node_flags(&dev, id));
    let Command::Serve(serve) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    let cfg = Config::load(None, &serve.overrides()).unwrap();
    cfg.node_config().unwrap()
}

#[test]
fn local_3_matches_replog_dev() {
    for id in 1..=3u64 {
        let path = format!(
            "{}/cluster/local-3/node{id}.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let file = Config::load(Some(path.as_ref()), &FlagOverrides::default())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let from_file = file.node_config().unwrap();
        let from_dev = dev_node_config(id);
        assert_eq!(from_file.id, from_dev.id);
        assert_eq!(from_file.listen, from_dev.listen);
        assert_eq!(from_file.metrics_listen, from_dev.metrics_listen);
        assert_eq!(from_file.data_dir, from_dev.data_dir);
        assert_eq!(from_file.initial_members, from_dev.initial_members);
        assert_eq!(from_file.wal, from_dev.wal);
    }
}
