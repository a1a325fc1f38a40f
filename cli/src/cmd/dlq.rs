//! `jetrun dlq list|show|replay`

use crate::GlobalOpts;

/// Dead letters: messages that could not be processed, kept with the reason.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCmd {
    /// List dead letters, oldest first.
    List {
        /// Start after this sequence.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its original payload.
    Show {
        /// Its sequence (from `dlq list`).
        seq: u64,
    },
    /// Republish a dead letter to its original subject and remove it from the DLQ. An
    /// entry holding only an excerpt of a large message is replayed with the whole
    /// original, read from its stream; if that stream no longer has it, nothing is sent.
    Replay {
        /// Its sequence (from `dlq list`).
        seq: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a dlq subcommand.
pub async fn run(g: &GlobalOpts, cmd: DlqCmd) -> anyhow::Result<()> {
    let client = jetrun_nats::connect(&g.nats_url, "jetrun-dlq", std::time::Duration::from_secs(10)).await?;
    let js = async_nats::jetstream::new(client);
    let names = g.names()?;
    match cmd {
        DlqCmd::List { after, limit, json } => {
            let items = jetrun_nats::dlq::list(&js, &names, after, limit).await?;
            if !json {
                println!(
                    "{:>6}  {:<10} {:<20} {:<32} REASON",
                    "SEQ", "ORIGIN", "KIND", "SUBJECT"
                );
            }
            for s in items {
                if json {
                    println!("{}", serde_json::json!({"seq": s.seq, "entry": s.entry}));
                } else {
                    println!(
                        "{:>6}  {:<10} {:<20} {:<32} {}",
                        s.seq, s.entry.origin, s.entry.reason_kind, s.entry.subject, s.entry.reason
                    );
                }
            }
        }
        DlqCmd::Show { seq } => {
            let e = jetrun_nats::dlq::show(&js, &names, seq).await?;
            let payload = e.payload().unwrap_or_default();
            let mut v = serde_json::to_value(&e)?;
            v["payload"] = match serde_json::from_slice::<serde_json::Value>(&payload) {
                Ok(j) => j,
                Err(_) => serde_json::Value::String(String::from_utf8_lossy(&payload).into_owned()),
            };
            if e.payload_truncated {
                // Say plainly that `payload` is only the start of the message.
                v["note"] = serde_json::Value::String(format!(
                    "payload is the first {} of {} bytes; `jetrun dlq replay {seq}` republishes the whole original from {} #{} while that stream retains it",
                    payload.len(),
                    e.payload_bytes.unwrap_or_default(),
                    e.stream.as_deref().unwrap_or("?"),
                    e.stream_seq.unwrap_or_default()
                ));
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        DlqCmd::Replay { seq, json } => {
            let new_seq = jetrun_nats::dlq::replay(&js, &names, seq).await?;
            if json {
                println!("{}", serde_json::json!({"replayed": seq, "stream_seq": new_seq}));
            } else {
                println!("replayed {seq} as stream sequence {new_seq}");
            }
        }
    }
    Ok(())
}
