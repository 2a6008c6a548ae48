//! `tandem`: the one binary. Parses the command line and runs a subcommand.

fn main() {
    println!("tandem {}", env!("CARGO_PKG_VERSION"));
}
