//! `dlq`: inspect, replay and purge foodchain's dead letters.
//!
//! Exit codes: 0 success, 1 Redis unreachable or failing, 2 usage error,
//! 3 unknown id, 4 malformed entry (shown raw), 5 purge not confirmed.

use std::{
    collections::BTreeMap,
    io::{BufRead, IsTerminal, Write},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand};
use dlq::{
    Dlq, Filter, Letter, Replay, ago, ms_ago, parse_duration, parse_time, rfc3339, truncate,
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(version, about = "Inspect, replay and purge foodchain's dead letters", long_about = None)]
struct Cli {
    /// Redis holding the streams.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = contract::redis::DEFAULT_URL,
        global = true
    )]
    redis_url: String,
    /// Key prefix of the deployment (as the services' STREAM_PREFIX).
    #[arg(long, env = "STREAM_PREFIX", default_value = "", global = true)]
    prefix: String,
    /// Partitions of every stream (as the services' STREAM_PARTITIONS;
    /// default: the count the services recorded in Redis, else 1); with
    /// more than one, dead letters are named `p<i>/<entry id>`.
    #[arg(long, env = "STREAM_PARTITIONS", global = true,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(contract::streams::MAX_PARTITIONS)))]
    partitions: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full.
    Show {
        /// Its id in the dead-letter stream (from `list`).
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on their original stream (same event id).
    Replay {
        /// Ids to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Replay every dead letter matching the filters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters for good.
    Purge {
        /// Ids to delete.
        #[arg(required_unless_present = "older_than", conflicts_with = "older_than")]
        ids: Vec<String>,
        /// Delete every dead letter older than this (e.g. 7d), within the filters.
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<std::time::Duration>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Counts by stream, group, event type, reason and error.
    Stats {
        #[command(flatten)]
        filter: FilterArgs,
        /// How many distinct errors to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone, Default)]
struct FilterArgs {
    /// Original stream (e.g. orders-stream).
    #[arg(long)]
    stream: Option<String>,
    /// Consumer group that gave up (e.g. delivery-svc).
    #[arg(long)]
    group: Option<String>,
    /// Event type (e.g. order.status_updated.v1).
    #[arg(long)]
    event_type: Option<String>,
    /// Reason: malformed, rejected, max_attempts, deferred_too_long.
    #[arg(long)]
    reason: Option<String>,
    /// Substring of the error text (case-insensitive).
    #[arg(long)]
    error: Option<String>,
    /// Dead-lettered since: a duration ago (30m, 2h, 7d) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    since: Option<u64>,
    /// Dead-lettered until: a duration ago or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    until: Option<u64>,
}

impl From<FilterArgs> for Filter {
    fn from(a: FilterArgs) -> Self {
        Self {
            stream: a.stream,
            group: a.group,
            event_type: a.event_type,
            reason: a.reason,
            error: a.error,
            since_ms: a.since,
            until_ms: a.until,
        }
    }
}

/// A failure with its exit code.
struct Fail(u8, String);

impl From<dlq::DlqError> for Fail {
    fn from(e: dlq::DlqError) -> Self {
        Self(1, format!("{e}"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, message)) => {
            eprintln!("dlq: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let dlq = Dlq::connect(&cli.redis_url, &cli.prefix, cli.partitions).await?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::List {
            filter,
            limit,
            json,
        } => {
            let letters = dlq.list(&filter.into(), limit).await?;
            if json {
                for l in &letters {
                    writeln!(out, "{}", to_json(&dlq, l, None)).ok();
                }
            } else {
                print_table(&mut out, &dlq, &letters);
            }
        }
        Command::Show { id, json } => {
            let letter = dlq
                .get(&id)
                .await?
                .ok_or_else(|| Fail(3, format!("no dead letter with id {id}")))?;
            let replays = match &letter {
                Letter::Dead(d) => dlq.replays(d).await?,
                Letter::Malformed { .. } => None,
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&to_json(&dlq, &letter, replays))
                        .unwrap_or_default()
                )
                .ok();
            } else {
                print_detail(&mut out, &dlq, &letter, replays);
            }
            if let Letter::Malformed { problem, .. } = &letter {
                return Err(Fail(
                    4,
                    format!("entry {id} is not a well-formed dead letter: {problem}"),
                ));
            }
        }
        Command::Replay {
            ids,
            all,
            filter,
            dry_run,
            json,
        } => {
            let filter: Filter = filter.into();
            let letters = if all {
                dlq.all(&filter).await?
            } else {
                fetch(&dlq, &ids).await?
            };
            let mut replayed = 0;
            for l in letters.iter().rev() {
                // Oldest first: replayed messages keep their relative order.
                let r = dlq.replay(l, dry_run).await?;
                replayed += usize::from(matches!(
                    r,
                    Replay::Replayed { .. } | Replay::WouldReplay { .. }
                ));
                if json {
                    writeln!(out, "{}", serde_json::to_string(&r).unwrap_or_default()).ok();
                } else {
                    writeln!(out, "{}", describe(&r)).ok();
                }
            }
            if !json {
                let verb = if dry_run { "would replay" } else { "replayed" };
                writeln!(out, "{verb} {replayed} of {} dead letter(s)", letters.len()).ok();
            }
        }
        Command::Purge {
            ids,
            older_than,
            filter,
            yes,
        } => {
            let letters = match older_than {
                Some(age) => {
                    let mut filter: Filter = filter.into();
                    let cutoff = ms_ago(age);
                    filter.until_ms = Some(filter.until_ms.map_or(cutoff, |u| u.min(cutoff)));
                    dlq.all(&filter).await?
                }
                None => fetch(&dlq, &ids).await?,
            };
            if letters.is_empty() {
                writeln!(out, "nothing to purge").ok();
                return Ok(());
            }
            if !yes && !confirm(letters.len())? {
                return Err(Fail(5, "not confirmed; nothing deleted".into()));
            }
            let ids: Vec<String> = letters.iter().map(|l| l.id().to_owned()).collect();
            let n = dlq.purge(&ids).await?;
            writeln!(out, "purged {n} dead letter(s)").ok();
        }
        Command::Stats { filter, top, json } => {
            let s = dlq.stats(&filter.into(), top).await?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&s).unwrap_or_default()
                )
                .ok();
            } else {
                print_stats(&mut out, &s);
            }
        }
    }
    Ok(())
}

/// The entries for explicit ids; an unknown id fails the whole command.
async fn fetch(dlq: &Dlq, ids: &[String]) -> Result<Vec<Letter>, Fail> {
    let mut letters = Vec::new();
    for id in ids {
        letters.push(
            dlq.get(id)
                .await?
                .ok_or_else(|| Fail(3, format!("no dead letter with id {id}")))?,
        );
    }
    // Newest first, like `list`; replay walks them oldest first.
    letters.sort_by_key(|l| std::cmp::Reverse(l.dead_lettered_ms()));
    Ok(letters)
}

fn confirm(n: usize) -> Result<bool, Fail> {
    if !std::io::stdin().is_terminal() {
        return Err(Fail(
            5,
            format!(
                "refusing to delete {n} dead letter(s) without --yes (stdin is not a terminal)"
            ),
        ));
    }
    eprint!("Delete {n} dead letter(s) for good? [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Fail(1, e.to_string()))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn describe(r: &Replay) -> String {
    match r {
        Replay::Replayed {
            id,
            stream,
            new_id,
            replay_count,
        } => {
            format!("replayed {id} → {stream} {new_id} (replay #{replay_count})")
        }
        Replay::WouldReplay { id, stream } => format!("would replay {id} → {stream}"),
        Replay::Gone { id } => format!("skipped {id}: already replayed or purged"),
        Replay::NotReplayable { id, problem } => {
            format!("skipped {id}: malformed dead letter ({problem})")
        }
    }
}

fn fields_json(fields: &[(String, Vec<u8>)]) -> Value {
    let map: BTreeMap<&str, String> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    json!(map)
}

fn to_json(dlq: &Dlq, l: &Letter, replays: Option<(u64, u64)>) -> Value {
    match l {
        Letter::Dead(d) => {
            let envelope = d
                .envelope()
                .ok()
                .map(|e| serde_json::to_value(e).unwrap_or(Value::Null));
            json!({
                "id": d.id,
                "origin_stream": dlq.display_stream(&d.origin_stream),
                "origin_key": d.origin_stream,
                "origin_id": d.origin_id,
                "group": d.group,
                "consumer": d.consumer,
                "reason": d.reason,
                "error": d.error,
                "attempts": d.attempts,
                "first_seen": rfc3339(d.first_seen_ms),
                "dead_lettered": rfc3339(d.dead_lettered_ms),
                "event_id": d.original_str("event_id"),
                "event_type": d.original_str("event_type"),
                "correlation_id": d.original_str("correlation_id"),
                "envelope": envelope,
                "fields": fields_json(&d.original),
                "replays": replays.map(|(count, last)| json!({"count": count, "last": rfc3339(last)})),
            })
        }
        Letter::Malformed { entry, problem } => json!({
            "id": entry.id,
            "malformed": problem,
            "raw": fields_json(&entry.fields),
        }),
    }
}

fn print_table(out: &mut impl Write, dlq: &Dlq, letters: &[Letter]) {
    if letters.is_empty() {
        writeln!(out, "no dead letters").ok();
        return;
    }
    let header = [
        "ID",
        "WHEN",
        "STREAM",
        "GROUP",
        "EVENT TYPE",
        "REASON",
        "ATT",
        "ERROR",
    ]
    .map(String::from);
    let rows: Vec<[String; 8]> = letters
        .iter()
        .map(|l| match l {
            Letter::Dead(d) => [
                d.id.clone(),
                ago(d.dead_lettered_ms),
                dlq.display_stream(&d.origin_stream),
                d.group.clone(),
                d.original_str("event_type").unwrap_or("-").to_owned(),
                d.reason.clone(),
                d.attempts.to_string(),
                truncate(&d.error, 60),
            ],
            Letter::Malformed { entry, problem } => [
                entry.id.clone(),
                ago(l.dead_lettered_ms()),
                "?".into(),
                "?".into(),
                "?".into(),
                "MALFORMED".into(),
                "-".into(),
                truncate(problem, 60),
            ],
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end()).ok();
    }
}

fn print_detail(out: &mut impl Write, dlq: &Dlq, l: &Letter, replays: Option<(u64, u64)>) {
    match l {
        Letter::Dead(d) => {
            let _ = writeln!(out, "dead letter     {}", d.id);
            let _ = writeln!(
                out,
                "origin          {} {}",
                dlq.display_stream(&d.origin_stream),
                d.origin_id
            );
            let _ = writeln!(out, "group/consumer  {} / {}", d.group, d.consumer);
            let _ = writeln!(
                out,
                "reason          {} after {} attempt(s)",
                d.reason, d.attempts
            );
            let _ = writeln!(
                out,
                "first seen      {} ({})",
                rfc3339(d.first_seen_ms),
                ago(d.first_seen_ms)
            );
            let _ = writeln!(
                out,
                "dead-lettered   {} ({})",
                rfc3339(d.dead_lettered_ms),
                ago(d.dead_lettered_ms)
            );
            if let Some((count, last)) = replays {
                let _ = writeln!(
                    out,
                    "replayed        {count} time(s), last {}",
                    rfc3339(last)
                );
            }
            let _ = writeln!(out, "error\n  {}", d.error);
            match d.envelope() {
                Ok(e) => {
                    let pretty = serde_json::to_string_pretty(&e).unwrap_or_default();
                    let _ = writeln!(out, "envelope\n{}", indent(&pretty));
                }
                Err(problem) => {
                    let _ = writeln!(out, "original fields (not a valid envelope: {problem})");
                    for (k, v) in &d.original {
                        let _ = writeln!(out, "  {k}: {}", String::from_utf8_lossy(v));
                    }
                }
            }
        }
        Letter::Malformed { entry, problem } => {
            let _ = writeln!(
                out,
                "entry {} is not a well-formed dead letter ({problem}); raw fields:",
                entry.id
            );
            for (k, v) in &entry.fields {
                let _ = writeln!(out, "  {k}: {}", String::from_utf8_lossy(v));
            }
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_stats(out: &mut impl Write, s: &dlq::Stats) {
    let _ = writeln!(out, "dead letters: {} ({} malformed)", s.total, s.malformed);
    if let (Some(o), Some(n)) = (s.oldest_ms, s.newest_ms) {
        let _ = writeln!(out, "oldest: {} ({})", rfc3339(o), ago(o));
        let _ = writeln!(out, "newest: {} ({})", rfc3339(n), ago(n));
    }
    for (title, rows) in [
        ("by stream", &s.by_stream),
        ("by group", &s.by_group),
        ("by event type", &s.by_event_type),
        ("by reason", &s.by_reason),
        ("top errors", &s.top_errors),
    ] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}:");
        for (k, n) in rows {
            let _ = writeln!(out, "  {n:>6}  {k}");
        }
    }
}
