use anyhow::Result;
use hotspot_node::daemon::check;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Returns the process exit code: 0 when migration can work here, 1 otherwise.
pub fn run(args: &CheckArgs) -> Result<i32> {
    let report = check::run_checks();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", check::render_table(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}
