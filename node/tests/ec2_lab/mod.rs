//! An emulated EC2 cluster for end-to-end tests: real `hotspot-node run --ec2 ...` daemons in
//! lab network namespaces, each one an instance in the moto emulator (instances at the
//! namespaces' LAN addresses, tagged with the cluster) with its own IMDSv2 metadata server;
//! discovery by tag (no mDNS), and redis with a live client on node1 whose EBS volume and ENI
//! in moto are attached to node1's instance.
//!
//! What stands in for the hardware: a loop device is the EBS disk, linked from the lab's device
//! directory (`--ec2-device-dir`) under the Nitro name `disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…`,
//! so the target's wait-for-device and mount run as on EC2; the workload's bridged veth `eth0`,
//! carrying the moto ENI's MAC and address, is the ENI (the local data path moves it between
//! the nodes' namespaces as the hypervisor would hot-plug it), and the target finds it by MAC
//! and policy-routes its address before the restore.
#![allow(dead_code)] // each test binary uses a different part

#[path = "../mesh_support/mod.rs"]
pub mod mesh_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hotspot_node::providers::ec2::imds::fake_server::FakeImds;
use hotspot_node::providers::ec2::imds::InstanceIdentity;
use hotspot_node::lab::{self, Daemon, Lan};
use hotspot_node::sys::loopdev::{self, VolumeCleanup};
use hotspot_node::sys::names::restore_netns;
use hotspot_node::migrate::{Progress, Summary};
use hotspot_node::providers::ec2::cloud_moves::WORKLOAD_TAG;
use hotspot_node::providers::ec2::discovery::DEFAULT_CLUSTER_TAG;
use hotspot_testkit::moto::{self, bind_in_netns, MotoServer, NetnsRelay};
use hotspot_node::providers::ec2::{build_client, Ec2ClientSettings};
use hotspot_testkit::testbed::{self, Cleanup, PipeliningClient};
use hotspot_testkit::host;
use hotspot_node::workload::{StartOptions, Workloads};

pub const ZONE: &str = "us-east-1a";

/// Everything one test made. Field order is drop order: client, workloads, volume, daemons,
/// metadata servers and relays, the LAN, the runtime, moto, files.
pub struct Ec2Lab {
    pub client: Option<PipeliningClient>,
    pub _guards: Vec<Cleanup>,
    pub _volume: Option<VolumeCleanup>,
    pub daemons: Vec<Daemon>,
    pub imds: Vec<FakeImds>,
    pub _relays: Vec<NetnsRelay>,
    pub lan: Lan,
    pub rt: tokio::runtime::Runtime,
    pub ec2: aws_sdk_ec2::Client,
    pub _moto: MotoServer,
    pub name: String,
    pub instances: Vec<String>,
    pub volume_id: String,
    pub eni_id: String,
    pub client_ns: String,
    pub server: SocketAddr,
    pub filled_keys: u64,
    pub flags: Vec<Vec<String>>,
    pub env: Vec<Vec<(String, String)>>,
    pub state_dirs: Vec<PathBuf>,
    pub cgroup_parents: Vec<String>,
    pub root: tempfile::TempDir,
}

impl Ec2Lab {
    /// Two instances in moto, a daemon per instance in its own namespace, redis on node1 with its
    /// volume and ENI attached to node1's instance, and a live client.
    ///
    /// `node2_zone`: the zone node2's metadata service reports (default: the volume's zone).
    pub fn new(test: &str, fault_on_node1: Option<&str>, node2_zone: Option<&str>) -> Option<Ec2Lab> {
        if !host::require_migration_host(test) {
            return None;
        }
        let moto = MotoServer::for_test(test)?;
        let moto_port: u16 = moto.endpoint().rsplit(':').next().unwrap().parse().unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut lan = Lan::new(2).unwrap();
        let client_ns = lan.add_client().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let settings = Ec2ClientSettings {
            endpoint_url: Some(moto.endpoint().into()),
            static_credentials: Some(("testing".into(), "testing".into())),
            ..Ec2ClientSettings::default()
        };
        let ec2 = rt.block_on(build_client(&settings));
        let pid = std::process::id();
        let cluster = format!("ec2lab{pid}");
        let name = format!("e2{}", pid % 100_000);
        let s = lan.subnet;
        let (instances, subnet) = rt.block_on(async {
            let subnet = moto::subnet_with_cidr(&ec2, &format!("10.77.{s}.0/24"), ZONE).await;
            let mut ids = Vec::new();
            for i in 0..2 {
                ids.push(moto::run_instance_at(&ec2, &subnet, &lan.node_ip(i).to_string(), &cluster).await);
            }
            (ids, subnet)
        });

        let mut relays = Vec::new();
        let mut imds = Vec::new();
        let mut flags = Vec::new();
        let mut env = Vec::new();
        let mut state_dirs = Vec::new();
        let cluster_dir = root.path().join("cluster");
        for i in 0..2 {
            let relay = NetnsRelay::start(&lan.nodes[i], moto_port).unwrap();
            let listener = bind_in_netns(&lan.nodes[i], ([127, 0, 0, 1], 0).into()).unwrap();
            listener.set_nonblocking(true).unwrap();
            let identity = InstanceIdentity { instance_id: instances[i].clone(), instance_type: "t3.micro".into(), zone: if i == 1 { node2_zone.unwrap_or(ZONE).into() } else { ZONE.into() }, region: "us-east-1".into() };
            let server = {
                let _in_rt = rt.enter();
                FakeImds::start(tokio::net::TcpListener::from_std(listener).unwrap(), identity).unwrap()
            };
            let state_dir = root.path().join(format!("node{}", i + 1)).join("state");
            let fault = fault_on_node1.filter(|_| i == 0).map(|f| vec!["--fault".to_string(), f.to_string()]).unwrap_or_default();
            flags.push(
                [
                    "--mdns", "false", "--listen", "/ip4/0.0.0.0/tcp/7946", "--advert-interval-ms", "1000",
                    "--cpu-millis", "4000", "--memory-bytes", "8589934592", "--ec2-cluster", cluster.as_str(),
                    "--ec2-on-demand-price", "0.0104", "--ec2-price-refresh-secs", "5", "--ec2-local-data-path",
                    "--ec2-discovery-refresh-secs", "2",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([
                    "--transfer-listen".into(),
                    format!("{}:7947", lan.node_ip(i)),
                    "--ec2-endpoint-url".into(),
                    format!("http://127.0.0.1:{}", relay.port),
                    "--ec2-imds-endpoint".into(),
                    server.endpoint(),
                    "--ec2-device-dir".into(),
                    root.path().join("dev").display().to_string(),
                ])
                .chain(fault)
                .collect::<Vec<String>>(),
            );
            let e: Vec<(String, String)> = [
                ("HOTSPOT_STATE_DIR", state_dir.display().to_string()),
                ("HOTSPOT_LOCAL_CLUSTER", cluster_dir.display().to_string()),
                ("AWS_ACCESS_KEY_ID", "testing".into()),
                ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            env.push(e);
            state_dirs.push(state_dir);
            relays.push(relay);
            imds.push(server);
        }
        let mut lab = Ec2Lab {
            client: None,
            _guards: Vec::new(),
            _volume: None,
            daemons: Vec::new(),
            imds,
            _relays: relays,
            lan,
            rt,
            ec2,
            _moto: moto,
            name,
            instances,
            volume_id: String::new(),
            eni_id: String::new(),
            client_ns,
            server: "0.0.0.0:0".parse().unwrap(),
            filled_keys: 0,
            flags,
            env,
            state_dirs,
            cgroup_parents: Vec::new(),
            root,
        };
        for i in 0..2 {
            // One after the other: node2 finds node1 by its tag (DescribeInstances), no mDNS.
            let d = lab.start_daemon(i);
            let id = d.status().unwrap().node;
            let mut guard = Cleanup::new(Workloads::new(&lab.state_dirs[i]));
            guard.names.push(lab.name.clone());
            guard.netns.push(restore_netns(&lab.name, &id));
            lab._guards.push(guard);
            lab.cgroup_parents.push(format!("hotspot-{}", &id[..8]));
            lab.daemons.push(d);
        }
        lab::wait_until("the nodes to find each other by EC2 tag", Duration::from_secs(60), || {
            lab.daemons.iter().all(|d| d.peers().is_ok_and(|p| p.len() == 1))
        })
        .unwrap();
        lab.start_redis(&subnet, &cluster);
        Some(lab)
    }

    pub fn start_daemon(&self, i: usize) -> Daemon {
        let flags: Vec<&str> = self.flags[i].iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self.env[i].iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let name = format!("node{}", i + 1);
        Daemon::start_with_env(Path::new(mesh_support::BIN), self.root.path(), &name, Some(&self.lan.nodes[i]), &flags, &env)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// redis on node1: its append-only file on a loop-device volume, its address on a veth
    /// bridged onto the LAN; in moto its EBS volume and ENI attached to node1's instance.
    pub fn start_redis(&mut self, subnet: &str, cluster: &str) {
        let (ec2, name, inst) = (&self.ec2, &self.name, &self.instances[0]);
        let service_ip = self.lan.service_address(1).ip.to_string();
        let (vol, (eni, mac)) = self.rt.block_on(async {
            let vol = moto::volume(ec2, ZONE, Some(inst.as_str())).await;
            let eni = moto::interface_at(ec2, subnet, &service_ip, inst).await;
            for id in [&vol, &eni.0] {
                moto::tag(ec2, id, WORKLOAD_TAG, name).await;
                moto::tag(ec2, id, DEFAULT_CLUSTER_TAG, cluster).await;
            }
            (vol, eni)
        });
        (self.volume_id, self.eni_id) = (vol.clone(), eni);

        let wls = Workloads::new(&self.state_dirs[0]);
        let image = self.root.path().join("disks").join(format!("{name}.img"));
        loopdev::create_image(&image, 256).unwrap();
        self._volume = Some(VolumeCleanup {
            image: image.clone(),
            mount_dirs: self.state_dirs.iter().map(|d| Workloads::new(d).volume_mount_dir(name)).collect(),
        });
        let device = loopdev::attach(&image).unwrap();
        // The loop device is the EBS disk as a Nitro instance shows it (the udev by-id link).
        let by_id = self.root.path().join("dev/disk/by-id");
        std::fs::create_dir_all(&by_id).unwrap();
        std::os::unix::fs::symlink(&device, by_id.join(format!("nvme-Amazon_Elastic_Block_Store_{}", vol.replace('-', "")))).unwrap();
        let data = self.root.path().join("redis-data");
        std::fs::create_dir_all(&data).unwrap();
        let d = data.display().to_string();
        let node1 = self.daemons[0].status().unwrap().node;
        let w = wls
            .start(&StartOptions {
                name: name.clone(),
                command: testbed::redis_command(&["--appendonly", "yes", "--appendfsync", "everysec", "--dir", &d]),
                address: Some(self.lan.service_address(1)),
                uplink_netns: Some(self.lan.hub.clone()),
                volume: Some(data),
                volume_device: Some(device),
                volume_handle: Some(vol.clone()),
                netns: Some(restore_netns(name, &node1)),
                ..Default::default()
            })
            .unwrap();
        // The workload's interface is the ENI: it has the ENI's MAC (the target finds it by it).
        hotspot_node::sys::netns::ip(&["-n", &w.record.netns, "link", "set", "eth0", "address", &mac]).unwrap();
        self.lan.bridge_port(&w.record.uplink.as_ref().unwrap().interface).unwrap();
        self.server = SocketAddr::new(self.lan.service_address(1).ip, 6379);
        assert!(testbed::wait_listening(Some(&self.client_ns), self.server, Duration::from_secs(20)), "redis came up");
        self.filled_keys = testbed::fill_random(Some(&self.client_ns), self.server, 8 << 20, 4096).unwrap();
        let client = PipeliningClient::start(Some(&self.client_ns), self.server, Duration::from_millis(3), "ec2").unwrap();
        assert!(client.wait_batches(30, Duration::from_secs(10)), "client is served");
        self.client = Some(client);
    }

    /// The namespace node `i` runs the workload in.
    pub fn workload_ns(&self, i: usize) -> String {
        restore_netns(&self.name, &self.daemons[i].status().unwrap().node)
    }

    /// Node `i` did the EC2 host steps before its restore: the EBS volume's device mounted at
    /// its staging directory, the ENI's address policy-routed in the workload's namespace
    /// (table 100, through the subnet's router); the other node let go of its mount.
    pub fn assert_host_prepared_on(&self, i: usize) {
        let staged = |n: usize| Workloads::new(&self.state_dirs[n]).volume_mount_dir(&self.name);
        assert!(hotspot_node::sys::mounts::is_mount_point(&staged(i)), "volume mounted on node{} for the restore", i + 1);
        assert!(!hotspot_node::sys::mounts::is_mount_point(&staged(1 - i)), "node{} unmounted it before the detach", 2 - i);
        let ns = self.workload_ns(i);
        let ip = self.lan.service_address(1).ip;
        let rules = hotspot_node::sys::netns::ip(&["-n", &ns, "rule", "show"]).unwrap();
        assert_eq!(rules.lines().filter(|l| l.contains(&format!("from {ip} lookup 100"))).count(), 1, "{rules}");
        let table = hotspot_node::sys::netns::ip(&["-n", &ns, "route", "show", "table", "100"]).unwrap();
        let gateway = self.lan.node_ip(0); // the subnet's first address
        assert!(table.contains(&format!("default via {gateway} dev eth0")), "{table}");
        assert!(table.contains(&format!("10.77.{}.0/24 dev eth0", self.lan.subnet)), "{table}");
    }

    /// Prints the daemons' warnings and errors (for a failing test's output).
    pub fn print_daemon_problems(&self) {
        for d in &self.daemons {
            let log = std::fs::read_to_string(&d.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("evacuat")).collect();
            eprintln!("--- {} ({} lines of note) ---\n{}", d.name, lines.len(), lines[lines.len().saturating_sub(40)..].join("\n"));
        }
    }

    pub fn runs_on(&self, i: usize) -> bool {
        Workloads::new(&self.state_dirs[i]).get(&self.name).is_ok_and(|w| w.is_running())
    }

    /// `hotspot-node migrate NAME --to TO --json` on node `from`: the summary, or the error text.
    pub fn migrate(&self, from: usize, to: &str) -> Result<Summary, String> {
        let out = self.daemons[from].cli(&["migrate", &self.name, "--to", to, "--json"]).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("migrate node{} -> {to}:\n{stdout}{}", from + 1, String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        match serde_json::from_str::<Progress>(stdout.lines().last().unwrap_or_default()) {
            Ok(Progress::Done(s)) => Ok(s),
            other => Err(format!("last line is not a summary: {other:?}")),
        }
    }

    /// (volume state, instances holding it) and (ENI status, instance holding it), from moto.
    pub fn cloud_state(&self) -> ((String, Vec<String>), (String, Option<String>)) {
        self.rt.block_on(async {
            let v = self.ec2.describe_volumes().volume_ids(&self.volume_id).send().await.unwrap();
            let v = &v.volumes()[0];
            let holders = v.attachments().iter().filter(|a| a.state().map(|s| s.as_str()) == Some("attached")).map(|a| a.instance_id().unwrap().to_string()).collect();
            let e = self.ec2.describe_network_interfaces().network_interface_ids(&self.eni_id).send().await.unwrap();
            let e = &e.network_interfaces()[0];
            let holder = e.attachment().filter(|a| a.status().map(|s| s.as_str()) == Some("attached")).and_then(|a| a.instance_id()).map(str::to_string);
            ((v.state().unwrap().as_str().to_string(), holders), (e.status().unwrap().as_str().to_string(), holder))
        })
    }

    pub fn assert_cloud_on(&self, i: usize) {
        let ((vstate, vols), (estate, eni)) = self.cloud_state();
        assert_eq!((vstate.as_str(), vols), ("in-use", vec![self.instances[i].clone()]), "EBS volume on node{}'s instance", i + 1);
        assert_eq!((estate.as_str(), eni), ("in-use", Some(self.instances[i].clone())), "ENI on node{}'s instance", i + 1);
    }

    pub fn check_client(&mut self) {
        let report = self.client.take().unwrap().finish();
        assert_eq!(report.error, None, "the client saw no error and never reconnected");
        report.incr_sequence_ok().unwrap();
        assert_eq!(report.dbsize, Some(report.sets_acked as i64 + 1 + self.filled_keys as i64), "every key survived");
        eprintln!("client: {} batches, longest stall {:?}", report.incrs.len(), report.max_stall);
    }
}

impl Drop for Ec2Lab {
    fn drop(&mut self) {
        // Daemons first (the rest drops in field order), then their empty cgroup parents.
        self.daemons.clear();
        for rel in &self.cgroup_parents {
            let _ = hotspot_node::sys::cgroup::Cgroup::at(rel).destroy(Duration::from_secs(1));
        }
    }
}

