//! Runs moto's EC2 emulator on a free loopback port, for tests, benchmarks and the local demo.
//! The process is owned and killed on drop. The seeding helpers create the instances, volumes
//! and interfaces a test or a demo moves around.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Placement, ResourceType, Tag, TagSpecification};

use hotspot_node::providers::ec2::discovery::DEFAULT_CLUSTER_TAG;

/// Where scripts/install-deps puts moto; `HOTSPOT_MOTO_SERVER` overrides it.
pub const DEFAULT_MOTO_SERVER: &str = "/var/cache/hotspot-mesh/venv/bin/moto_server";

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("moto server not found at {0} (run scripts/install-deps or set HOTSPOT_MOTO_SERVER)")]
    Missing(PathBuf),
    #[error("starting {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("moto server exited before listening ({0})")]
    Exited(std::process::ExitStatus),
    #[error("moto server did not listen on port {0} within 60 s")]
    NotListening(u16),
}

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    endpoint: String,
}

pub fn moto_path() -> PathBuf {
    std::env::var_os("HOTSPOT_MOTO_SERVER").map_or_else(|| PathBuf::from(DEFAULT_MOTO_SERVER), PathBuf::from)
}

impl MotoServer {
    pub fn start() -> Result<MotoServer, EmulatorError> {
        let path = moto_path();
        if !path.exists() {
            return Err(EmulatorError::Missing(path));
        }
        // Port 0 cannot be handed to moto: take a free port and release it just before.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|source| EmulatorError::Spawn { path: path.clone(), source })?
            .port();
        let mut child = Command::new(&path)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| EmulatorError::Spawn { path: path.clone(), source })?;
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(EmulatorError::Exited(status));
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(EmulatorError::NotListening(port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(MotoServer { child, endpoint: format!("http://127.0.0.1:{port}") })
    }

    /// For `Ec2ClientSettings::endpoint_url`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Starts moto for test `name`, or returns `None` after printing why the test is skipped
    /// when moto is not installed. Under `CI=true` a missing moto fails instead.
    pub fn for_test(name: &str) -> Option<MotoServer> {
        match MotoServer::start() {
            Ok(m) => Some(m),
            Err(e @ EmulatorError::Missing(_)) if !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                eprintln!("SKIPPED {name}: {e}");
                None
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Seeding helpers. They panic on failure: they set up tests and demos, not production state.

pub async fn image_id(c: &aws_sdk_ec2::Client) -> String {
    let images = c.describe_images().send().await.expect("DescribeImages");
    images.images().first().and_then(|i| i.image_id()).expect("moto ships AMIs").to_string()
}

/// Runs one instance in `zone`, tagged `cluster` when given.
pub async fn run_instance(c: &aws_sdk_ec2::Client, zone: &str, cluster: Option<&str>) -> String {
    let mut req = c
        .run_instances()
        .image_id(image_id(c).await)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone(zone).build());
    if let Some(cluster) = cluster {
        req = req.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key(DEFAULT_CLUSTER_TAG).value(cluster).build())
                .build(),
        );
    }
    let out = req.send().await.expect("RunInstances");
    out.instances()[0].instance_id().unwrap().to_string()
}

pub async fn subnet_in(c: &aws_sdk_ec2::Client, zone: &str) -> String {
    let f = aws_sdk_ec2::types::Filter::builder().name("availability-zone").values(zone).build();
    let out = c.describe_subnets().filters(f).send().await.expect("DescribeSubnets");
    out.subnets()[0].subnet_id().unwrap().to_string()
}

/// A new volume in `zone`, attached to `instance` as `/dev/sdf` when given.
pub async fn volume(c: &aws_sdk_ec2::Client, zone: &str, attached_to: Option<&str>) -> String {
    let out = c.create_volume().availability_zone(zone).size(1).send().await.expect("CreateVolume");
    let id = out.volume_id().unwrap().to_string();
    if let Some(inst) = attached_to {
        c.attach_volume().volume_id(&id).instance_id(inst).device("/dev/sdf").send().await.expect("AttachVolume");
    }
    id
}

/// A new ENI in `subnet`, attached to `instance` at device index 1 when given.
pub async fn interface(c: &aws_sdk_ec2::Client, subnet: &str, attached_to: Option<&str>) -> String {
    let out = c.create_network_interface().subnet_id(subnet).send().await.expect("CreateNetworkInterface");
    let id = out.network_interface().unwrap().network_interface_id().unwrap().to_string();
    if let Some(inst) = attached_to {
        let req = c.attach_network_interface().network_interface_id(&id).instance_id(inst).device_index(1);
        req.send().await.expect("AttachNetworkInterface");
    }
    id
}

/// A new ENI in `subnet` with primary address `ip`, attached to `instance` at device index 1.
/// Returns its id and MAC address.
pub async fn interface_at(c: &aws_sdk_ec2::Client, subnet: &str, ip: &str, attached_to: &str) -> (String, String) {
    let out = c.create_network_interface().subnet_id(subnet).private_ip_address(ip).send().await.expect("CreateNetworkInterface");
    let eni = out.network_interface().expect("interface");
    let id = eni.network_interface_id().unwrap().to_string();
    let mac = eni.mac_address().expect("moto gives ENIs a MAC address").to_string();
    let req = c.attach_network_interface().network_interface_id(&id).instance_id(attached_to).device_index(1);
    req.send().await.expect("AttachNetworkInterface");
    (id, mac)
}

/// Binds a TCP listener inside network namespace `netns` (a name under /run/netns). The socket
/// stays in that namespace; only the short-lived binding thread ever enters it.
pub fn bind_in_netns(netns: &str, addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let path = hotspot_node::sys::netns::path(netns);
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        // SAFETY: setns(2) on a valid namespace fd; it changes only this (throwaway) thread.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpListener::bind(addr)
    })
    .join()
    .map_err(|_| std::io::Error::other("binding thread panicked"))?
}

/// Makes a host-loopback port (the emulator's) reachable as `127.0.0.1:port` inside a lab
/// network namespace, the way an instance reaches its regional endpoint: a plain TCP relay
/// whose listening socket lives in the namespace. Stops on drop.
#[derive(Debug)]
pub struct NetnsRelay {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NetnsRelay {
    pub fn start(netns: &str, to_port: u16) -> std::io::Result<NetnsRelay> {
        use std::sync::atomic::Ordering;
        let listener = bind_in_netns(netns, ([127, 0, 0, 1], 0).into())?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        // This thread is in the host's namespace: the connect reaches the emulator.
                        if let Ok(outside) = TcpStream::connect(("127.0.0.1", to_port)) {
                            pipe_both_ways(inside, outside);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(NetnsRelay { port, stop })
    }
}

impl Drop for NetnsRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn pipe_both_ways(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else { return };
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    copy(a, b2);
    copy(b, a2);
}

/// A VPC and one subnet `cidr` in `zone` (for instances at chosen private addresses).
pub async fn subnet_with_cidr(c: &aws_sdk_ec2::Client, cidr: &str, zone: &str) -> String {
    let vpc = c.create_vpc().cidr_block(cidr).send().await.expect("CreateVpc");
    let vpc = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id").to_string();
    let out = c.create_subnet().vpc_id(vpc).cidr_block(cidr).availability_zone(zone).send().await.expect("CreateSubnet");
    out.subnet().and_then(|s| s.subnet_id()).expect("subnet id").to_string()
}

/// Runs one instance in `subnet` at `private_ip`, tagged `cluster` (the lab's "host" `private_ip`).
pub async fn run_instance_at(c: &aws_sdk_ec2::Client, subnet: &str, private_ip: &str, cluster: &str) -> String {
    let out = c
        .run_instances()
        .image_id(image_id(c).await)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .private_ip_address(private_ip)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key(DEFAULT_CLUSTER_TAG).value(cluster).build())
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    out.instances()[0].instance_id().unwrap().to_string()
}

/// Tags resource `id` with `key=value`.
pub async fn tag(c: &aws_sdk_ec2::Client, id: &str, key: &str, value: &str) {
    c.create_tags().resources(id).tags(Tag::builder().key(key).value(value).build()).send().await.expect("CreateTags");
}
