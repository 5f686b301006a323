//! `krbottle approve ID` and `krbottle deny ID`: a human answers an agent's request.

use crate::cli::AnswerArgs;
use crate::exit;
use crate::output::{Reporter, print_json};
use crate::queue::{self, Verdict, printable};
use crate::state::StateRoot;

pub async fn run(args: AnswerArgs, verdict: Verdict, reporter: &Reporter) -> anyhow::Result<u8> {
    let state = StateRoot::open_default();
    let AnswerArgs {
        id,
        comment,
        bottle,
        json,
    } = args;
    let record = queue::blocking(move || {
        queue::answer(
            &state,
            bottle.as_deref(),
            &id,
            verdict,
            comment.as_deref(),
            chrono::Utc::now(),
        )
    })
    .await?;
    if json {
        print_json(&record)?;
    } else {
        reporter.status(format!(
            "{} request {} of bottle {}: {}",
            record.state,
            record.id,
            record.bottle,
            printable(&record.title, false)
        ));
    }
    Ok(exit::OK)
}
