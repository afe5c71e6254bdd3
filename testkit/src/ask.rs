//! A test ask agent: answers domaind's `ask` questions as the test says, and records them.

use bulkhead_api::Domaind1Proxy;

use crate::{TestDomaind, TestResult};

/// What a [`TestAskAgent`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskAnswer {
    /// Choose this target.
    Target(String),
    /// Answer "" (the user refused).
    Deny,
    /// Never answer (domaind's timeout must deny).
    Never,
}

/// One question domaind asked a [`TestAskAgent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskQuestion {
    pub source: String,
    pub service: String,
    pub arg: String,
    pub targets: Vec<String>,
    pub default_target: String,
}

#[derive(Debug)]
struct AskState {
    answer: AskAnswer,
    asked: Vec<AskQuestion>,
}

struct AskObject(std::sync::Arc<std::sync::Mutex<AskState>>);

#[zbus::interface(name = "org.bulkhead.AskAgent1")]
impl AskObject {
    async fn ask(
        &self,
        source: String,
        service: String,
        arg: String,
        targets: Vec<String>,
        default_target: String,
    ) -> String {
        let answer = {
            let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
            st.asked.push(AskQuestion {
                source,
                service,
                arg,
                targets,
                default_target,
            });
            st.answer.clone()
        };
        match answer {
            AskAnswer::Target(t) => t,
            AskAnswer::Deny => String::new(),
            AskAnswer::Never => std::future::pending().await,
        }
    }
}

/// An ask agent on the test bus (as the GUI will be): exports `org.bulkhead.AskAgent1` and
/// registers with domaind; answers as told and records every question.
pub struct TestAskAgent {
    _conn: zbus::Connection,
    state: std::sync::Arc<std::sync::Mutex<AskState>>,
}

impl TestAskAgent {
    pub async fn register(d: &TestDomaind, answer: AskAnswer) -> TestResult<Self> {
        let state = std::sync::Arc::new(std::sync::Mutex::new(AskState {
            answer,
            asked: Vec::new(),
        }));
        let conn = zbus::connection::Builder::address(d.bus_address())
            .map_err(|e| e.to_string())?
            .serve_at(bulkhead_api::ASK_AGENT_PATH, AskObject(state.clone()))
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| format!("ask agent connection: {e}"))?;
        let proxy = Domaind1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
        proxy
            .register_ask_agent()
            .await
            .map_err(|e| format!("RegisterAskAgent: {e}"))?;
        Ok(Self { _conn: conn, state })
    }

    pub fn set_answer(&self, answer: AskAnswer) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).answer = answer;
    }

    /// Every question so far (and forget them).
    pub fn take_questions(&self) -> Vec<AskQuestion> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).asked)
    }
}
