//! `bulkhead-template`: build a template without domaind, straight into a template store.
//!
//! domaind builds templates for `bulkhead template build`; this tool serves the test suite
//! and CI, which warm a template cache before the tests that need a real domain root, and
//! anyone who wants to build a template on a machine where domaind does not run yet.

use anyhow::Context;
use bulkhead_templates::{Recipe, TemplateStore};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Build Bulkhead templates from their recipes (cached by content)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build RECIPE (a .toml file) into the store, or reuse the cached root if unchanged.
    Build {
        /// The template store (domaind's is /var/lib/bulkhead/templates).
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        recipe: PathBuf,
        /// Also build what VM domains boot (kernel, initramfs, root image; needs the recipe's
        /// [vm] section). domaind does this itself at the first start of a VM domain.
        #[arg(long)]
        vm: bool,
    },
    /// Print the state of a template in the store.
    Status {
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Build { store, recipe, vm } => {
            let recipe = Recipe::load(&recipe)
                .with_context(|| format!("cannot use the recipe {}", recipe.display()))?;
            std::fs::create_dir_all(&store)
                .with_context(|| format!("cannot create the store {}", store.display()))?;
            let store = TemplateStore::new(store);
            let root = store.build(&recipe, &mut |p| eprintln!("{}: {p}", recipe.name()))?;
            println!("{}", root.display());
            if vm {
                let a = store.build_vm(&recipe, &mut |p| eprintln!("{}: {p}", recipe.name()))?;
                println!("{}", a.dir.display());
            }
        }
        Command::Status { store, name } => {
            let name = bulkhead_domain::DomainName::new(&name)
                .with_context(|| format!("'{name}' is not a valid template name"))?;
            println!("{:?}", TemplateStore::new(store).status(&name));
        }
    }
    Ok(())
}
