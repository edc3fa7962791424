//! `hotspot-node workload ...`: start, list, stop, checkpoint, restore and adopt workloads.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use hotspot_node::criu::Criu;
use hotspot_node::sys::loopdev;
use hotspot_node::workload::{Checkpoint, CheckpointOptions, IfAddr, RestoreSpec, ServiceNet, StartOptions, Workloads, DEFAULT_STATE_DIR};

#[derive(Debug, clap::Args)]
pub struct WorkloadArgs {
    /// Where workload records, console logs and CRIU work files live.
    #[arg(long, global = true, env = "HOTSPOT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: WorkloadCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkloadCommand {
    /// Start CMD in its own PID, mount, UTS, IPC and network namespaces and cgroup.
    #[command(after_help = "Example: hotspot-node workload start web --address 10.77.0.2/24 -- redis-server --protected-mode no")]
    Start {
        /// Workload name (1-32 of a-z A-Z 0-9 . _ -).
        name: String,
        /// Service address inside the workload's network namespace, on a veth whose host end
        /// gets a route to it (the local stand-in for an ENI).
        #[arg(long, value_name = "IP/PREFIX")]
        address: Option<IfAddr>,
        /// Host directory the workload uses as its disk (its working directory; /volume with --rootfs).
        #[arg(long, value_name = "PATH")]
        volume: Option<PathBuf>,
        /// ext4 image file to use as the volume: attached to a loop device and mounted at
        /// --volume inside the workload only (the local stand-in for an EBS disk, moved between
        /// nodes by the local provider). Created with --volume-size-mib if missing.
        #[arg(long, value_name = "FILE", requires = "volume")]
        volume_image: Option<PathBuf>,
        /// Size of a new --volume-image.
        #[arg(long, value_name = "MIB", default_value_t = 1024)]
        volume_size_mib: u64,
        /// Root filesystem to pivot_root into (default: share the host's).
        #[arg(long, value_name = "DIR")]
        rootfs: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// List workloads with their PID, namespace, address and state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop a workload and remove its namespace, cgroup and record.
    Stop { name: String },
    /// Checkpoint a workload with CRIU into an image directory.
    Checkpoint {
        name: String,
        /// Directory for the images (created).
        #[arg(long, value_name = "DIR")]
        images: PathBuf,
        /// Keep it running (a pre-copy round); default: the final, stopping dump.
        #[arg(long)]
        leave_running: bool,
    },
    /// Restore a checkpoint into a fresh network namespace, moving the service address there.
    /// If it fails, the workload is restored where it was (rollback).
    Restore {
        /// Image directory written by `workload checkpoint`.
        #[arg(long, value_name = "DIR")]
        images: PathBuf,
        /// Name of the restored workload (default: the checkpointed one's).
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
        /// Network namespace to restore into (default: hs-NAME-r, created).
        #[arg(long, value_name = "NETNS")]
        netns: Option<String>,
    },
    /// Record a running runc container as a workload (runc drives CRIU for it).
    Adopt {
        /// runc container id.
        #[arg(long)]
        runc: String,
        name: String,
    },
}

pub fn run(args: &WorkloadArgs) -> Result<i32> {
    let wls = Workloads::new(&args.state_dir);
    match &args.command {
        WorkloadCommand::Start { name, address, volume, volume_image, volume_size_mib, rootfs, command } => {
            let volume_device = match volume_image {
                Some(image) => {
                    loopdev::create_image(image, *volume_size_mib)?;
                    Some(loopdev::attach(image)?)
                }
                None => None,
            };
            let opts = StartOptions {
                name: name.clone(),
                command: command.clone(),
                address: *address,
                volume: volume.clone(),
                volume_device,
                volume_handle: volume_image.as_ref().map(|i| i.display().to_string()),
                rootfs: rootfs.clone(),
                ..Default::default()
            };
            let w = match wls.start(&opts) {
                Ok(w) => w,
                Err(e) => {
                    if let Some(image) = volume_image {
                        let _ = loopdev::detach(image, Duration::from_secs(5));
                    }
                    return Err(e.into());
                }
            };
            if let Some(image) = volume_image {
                // The workload's mount holds the device now: a detach only marks it to go away
                // with that mount (autoclear), so stopping the workload leaks no loop device.
                loopdev::detach_when_unused(image)?;
            }
            println!("started {} pid {} netns {}{}", w.name(), w.pid().unwrap_or(0), w.netns(), address.map(|a| format!(" address {a}")).unwrap_or_default());
            println!("output: {}", wls.console_log(name).display());
        }
        WorkloadCommand::List { json } => list(&wls, *json)?,
        WorkloadCommand::Stop { name } => {
            wls.stop(name)?;
            println!("stopped {name}");
        }
        WorkloadCommand::Checkpoint { name, images, leave_running } => {
            let criu = Criu::detect()?;
            let mut opts = CheckpointOptions::new(images);
            opts.leave_running = *leave_running;
            let cp = wls.checkpoint(&criu, name, &opts)?;
            if let Some(s) = &cp.stats {
                println!(
                    "checkpointed {name} into {}: {:.1} MiB in {} ms (frozen {} ms), {} TCP connection(s) locked",
                    images.display(),
                    s.image_bytes as f64 / 1048576.0,
                    s.elapsed.as_millis(),
                    s.criu.map(|c| c.frozen_us / 1000).unwrap_or(0),
                    s.locked_connections
                );
            } else {
                println!("checkpointed {name} into {}", images.display());
            }
            if !*leave_running {
                println!("{name} is stopped; restore it with: hotspot-node workload restore --images {}", images.display());
            }
        }
        WorkloadCommand::Restore { images, name, netns } => {
            let criu = Criu::detect()?;
            let cp = Checkpoint::open(images, &criu)?;
            let src = cp.meta.workload.clone();
            let name = name.clone().unwrap_or_else(|| src.name.clone());
            let target_ns = netns.clone().unwrap_or_else(|| format!("{}-r", hotspot_node::sys::names::workload_netns(&name)));
            let spec = RestoreSpec {
                name: name.clone(),
                netns: target_ns.clone(),
                service_net: ServiceNet::MoveFrom(src.netns.clone()),
                timeout: Duration::from_secs(300),
            };
            let (w, out) = wls.restore_or_roll_back(&criu, &cp, &spec, &cp).context("restore")?;
            println!("restored {} pid {} netns {} in {} ms", w.name(), out.pid, w.netns(), out.elapsed.as_millis());
            if name != src.name {
                wls.retire(&src.name).with_context(|| format!("removing the source record {}", src.name))?;
            }
        }
        WorkloadCommand::Adopt { runc, name } => {
            let w = wls.adopt_runc(runc, name)?;
            println!("adopted runc container {runc} as {} (pid {})", w.name(), w.pid().unwrap_or(0));
        }
    }
    Ok(0)
}

fn list(wls: &Workloads, json: bool) -> Result<()> {
    let all = wls.list();
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|r| match r {
                Ok(w) => serde_json::json!({ "workload": w.record, "running": w.is_running() }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<20} {:<8} {:<13} {:<20} {:<18} COMMAND", "NAME", "PID", "STATE", "NETNS", "ADDRESS");
    for r in all {
        match r {
            Ok(w) => {
                let state = if w.is_running() {
                    "running"
                } else if w.pid().is_none() {
                    "checkpointed"
                } else {
                    "exited"
                };
                println!(
                    "{:<20} {:<8} {:<13} {:<20} {:<18} {}",
                    w.name(),
                    w.pid().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    state,
                    w.netns(),
                    w.address().map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                    w.record.command.join(" ")
                );
            }
            Err(e) => println!("unreadable record: {e}"),
        }
    }
    Ok(())
}
