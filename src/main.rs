mod cli;

fn main() {
    if let Err(err) = cli::main() {
        // One line, the whole chain: "cannot X: because Y".
        eprintln!("sealfs: error: {err:#}");
        std::process::exit(1);
    }
}
