//! `jetrun image`: the local image store the OCI runner reads (`<data_dir>/images`).

use std::path::PathBuf;

use clap::Subcommand;
use jetrun_runner::image::{BUILTIN, ImageStore};

/// Where the store lives.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The data directory (the same as `jetrun dev --data-dir` / `jetrun worker`).
    #[arg(long, env = "JETRUN_DATA_DIR", default_value = ".jetrun/dev")]
    pub data_dir: PathBuf,
}

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Import a rootfs directory, a rootfs tarball (.tar, .tar.gz) or an OCI image layout
    /// (a directory with `index.json` and `oci-layout`) as NAME, replacing any image NAME.
    Import {
        /// The image name jobs use in `image`.
        name: String,
        /// The directory, tarball or OCI layout.
        path: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List stored images.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Build the built-in images (`host`, `busybox`) if they are missing (idempotent).
    Setup {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove an image.
    Rm {
        /// The image name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Runs an image command.
pub async fn run(_g: &crate::GlobalOpts, cmd: ImageCmd) -> anyhow::Result<()> {
    // The store does blocking file and tar work.
    tokio::task::spawn_blocking(move || run_blocking(cmd)).await?
}

fn run_blocking(cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Import { name, path, store } => {
            let img = ImageStore::new(&store.data_dir)?.import(&name, &path)?;
            println!("{}\t{}", img.name, img.rootfs.display());
        }
        ImageCmd::List { store } => {
            let store = ImageStore::new(&store.data_dir)?;
            println!("NAME\tBINDS\tSOURCE");
            for img in store.list()? {
                println!("{}\t{}\t{}", img.name, img.config.binds.len(), img.config.source);
            }
        }
        ImageCmd::Setup { store } => {
            let store = ImageStore::new(&store.data_dir)?;
            for name in BUILTIN {
                let img = store.ensure(name)?;
                println!("{}\t{}", img.name, img.rootfs.display());
            }
        }
        ImageCmd::Rm { name, store } => ImageStore::new(&store.data_dir)?.remove(&name)?,
    }
    Ok(())
}
