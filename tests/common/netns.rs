//! Test hosts in network namespaces, so that links between nodes can really be cut.
//!
//! Topology: one namespace per node, each with a veth into a "hub" namespace holding a bridge;
//! the test's own namespace joins the bridge through one more veth, so the CLI reaches every
//! node directly (no routing, no forwarding, nothing touched in the host's firewall). The hub
//! is a fresh namespace: the host's bridge-netfilter rules (Docker's) do not apply in it.
//!
//! A cut is an nftables rule in a node's namespace dropping packets to or from a peer's
//! address: traffic is dropped on the wire, as a partition does, not refused. Needs root,
//! iproute2 and nftables (CI has them).
#![allow(dead_code)]

use std::process::Command;

/// First two octets of the test subnet: a private range used only inside these namespaces.
const NET_PREFIX: &str = "10.213";

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `n` test hosts on one bridge. Removed on drop.
pub struct Hosts {
    tag: String,
    hub: String,
    /// Namespace of node i+1.
    pub namespaces: Vec<String>,
    /// Address of node i+1.
    pub ips: Vec<String>,
    /// The test's own address on the bridge.
    pub local_ip: String,
    root_veth: String,
}

impl Hosts {
    /// Creates the namespaces, the bridge and the links; fails with the command that failed.
    pub fn create(n: usize) -> Result<Hosts, String> {
        let pid = std::process::id();
        let tag = format!("rl{}", pid % 100_000);
        let subnet = 1 + pid % 250;
        let mut h = Hosts {
            hub: format!("{tag}hub"),
            namespaces: (1..=n).map(|i| format!("{tag}n{i}")).collect(),
            ips: (1..=n)
                .map(|i| format!("{NET_PREFIX}.{subnet}.{i}"))
                .collect(),
            local_ip: format!("{NET_PREFIX}.{subnet}.254"),
            root_veth: format!("{tag}r"),
            tag,
        };
        h.cleanup();
        h.build(subnet)?;
        Ok(h)
    }

    fn build(&mut self, subnet: u32) -> Result<(), String> {
        let hub = self.hub.clone();
        run(&["ip", "netns", "add", &hub])?;
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for (i, ns) in self.namespaces.clone().iter().enumerate() {
            let (inner, outer) = (format!("{}v{i}", self.tag), format!("{}p{i}", self.tag));
            run(&["ip", "netns", "add", ns])?;
            run(&[
                "ip", "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ])?;
            run(&["ip", "link", "set", &inner, "netns", ns])?;
            run(&["ip", "link", "set", &outer, "netns", &hub])?;
            run(&["ip", "-n", &hub, "link", "set", &outer, "master", "br0"])?;
            run(&["ip", "-n", &hub, "link", "set", &outer, "up"])?;
            let ip = format!("{}/24", self.ips[i]);
            run(&["ip", "-n", ns, "addr", "add", &ip, "dev", &inner])?;
            run(&["ip", "-n", ns, "link", "set", &inner, "up"])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            self.nft(i, "add table inet nemesis")?;
            self.nft(
                i,
                "add chain inet nemesis in { type filter hook input priority 0 ; }",
            )?;
            self.nft(
                i,
                "add chain inet nemesis out { type filter hook output priority 0 ; }",
            )?;
        }
        let outer = format!("{}q", self.tag);
        run(&[
            "ip",
            "link",
            "add",
            &self.root_veth,
            "type",
            "veth",
            "peer",
            "name",
            &outer,
        ])?;
        run(&["ip", "link", "set", &outer, "netns", &hub])?;
        run(&["ip", "-n", &hub, "link", "set", &outer, "master", "br0"])?;
        run(&["ip", "-n", &hub, "link", "set", &outer, "up"])?;
        let local = format!("{}/24", self.local_ip);
        run(&["ip", "addr", "add", &local, "dev", &self.root_veth])?;
        run(&["ip", "link", "set", &self.root_veth, "up"])?;
        let _ = subnet;
        Ok(())
    }

    fn nft(&self, node: usize, rule: &str) -> Result<(), String> {
        let mut args = vec!["ip", "netns", "exec", &self.namespaces[node], "nft"];
        args.extend(rule.split(' '));
        run(&args)
    }

    /// A command that runs `program` inside node `i`'s namespace (`ip netns exec` execs it:
    /// the child's pid is the program's).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespaces[i], program]);
        c
    }

    /// Drops every packet from node `from` to node `to` (indexes from 0). One way at the packet
    /// level: TCP between the two stalls both ways, as on a real network.
    pub fn cut(&self, from: usize, to: usize) {
        let rule = format!("add rule inet nemesis out ip daddr {} drop", self.ips[to]);
        self.nft(from, &rule).expect("cut a link");
        let rule = format!("add rule inet nemesis in ip saddr {} drop", self.ips[from]);
        self.nft(to, &rule).expect("cut a link");
    }

    /// Cuts `node` off from every other node, both ways (clients still reach it).
    pub fn isolate(&self, node: usize) {
        for other in (0..self.ips.len()).filter(|o| *o != node) {
            self.cut(node, other);
            self.cut(other, node);
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for i in 0..self.namespaces.len() {
            self.nft(i, "flush chain inet nemesis in").expect("heal");
            self.nft(i, "flush chain inet nemesis out").expect("heal");
        }
    }

    fn cleanup(&self) {
        let _ = run(&["ip", "link", "del", &self.root_veth]);
        for ns in self.namespaces.iter().chain([&self.hub]) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.cleanup();
    }
}
