//! The sandbox: emulators of Google (OAuth, Sheets, Drive), Salesforce, Meta's WhatsApp Cloud API and
//! Twilio's Messaging API over real HTTP on loopback, plus an admin API to seed sheets, edit cells as a person would, read
//! what was sent, make simulated people reply and inject faults.
//!
//! It serves `recado sandbox`, `recado demo` and the integration tests; the daemon talks to it
//! through the same clients it uses in production (only base URLs differ). Paths:
//! `/google/token`, `/google/sheets/v4/…`, `/google/drive/v3/…`, `/meta/{version}/…`,
//! `/twilio/2010-04-01/…`, `/admin/…`.

pub mod google;
pub mod keys;
pub mod meta;
pub mod multipart;
pub mod rehearsal;
pub mod salesforce;
pub mod twilio;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

pub use google::{GoogleFault, GoogleState};
pub use meta::{MetaFault, MetaSettings, MetaState, SimUser, TemplateDef, UserMessage};
pub use salesforce::{RecordFault, SalesforceState, SfAction, SfFault, SfKind};
pub use twilio::{ContentDef, TwilioFault, TwilioSettings, TwilioState, TwilioUser};

/// A webhook exactly as the vendor would POST it (URL, signature header, body), built but not
/// sent: load runs post many of these themselves to measure ingestion alone.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// One thing a scripted person does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptLine {
    /// Writes this text.
    pub say: Option<String>,
    /// Taps the reply button or list row with this title (or a template's quick-reply button)
    /// of the message just received; on Twilio, where options come as numbered text, types
    /// the option's number.
    pub tap: Option<String>,
    /// Sends a photo with this caption.
    pub photo: Option<String>,
    /// Acts only on a message containing this text; earlier messages are read and let pass.
    pub after: Option<String>,
    /// Thinks this long before acting.
    pub delay_ms: u64,
}

/// Takes one use of the first fault in `faults` that `applies`: a fault injected with a count
/// is used up one request at a time, then removed. `count` says where a fault keeps its count.
pub(crate) fn take_fault<F: Clone>(
    faults: &mut std::collections::VecDeque<F>,
    applies: impl Fn(&F) -> bool,
    count: impl Fn(&mut F) -> &mut u32,
) -> Option<F> {
    let pos = faults.iter().position(applies)?;
    let fault = faults[pos].clone();
    let left = count(&mut faults[pos]);
    *left = left.saturating_sub(1);
    if *left == 0 {
        faults.remove(pos);
    }
    Some(fault)
}

pub struct SandboxInner {
    pub google: GoogleState,
    pub meta: Arc<MetaState>,
    pub twilio: Arc<TwilioState>,
    pub salesforce: Arc<SalesforceState>,
    base_url: OnceLock<String>,
}

impl SandboxInner {
    pub fn base_url(&self) -> String {
        self.base_url.get().cloned().unwrap_or_default()
    }
}

pub type SandboxState = Arc<SandboxInner>;

/// A running sandbox.
pub struct Sandbox {
    state: SandboxState,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    /// Binds `listen` (port 0 for any) and serves until [`Sandbox::stop`].
    pub async fn start(listen: SocketAddr, settings: MetaSettings) -> anyhow::Result<Sandbox> {
        Self::start_with(listen, settings, TwilioSettings::default()).await
    }

    /// [`Sandbox::start`] with the Twilio emulator's settings too.
    pub async fn start_with(
        listen: SocketAddr,
        settings: MetaSettings,
        twilio: TwilioSettings,
    ) -> anyhow::Result<Sandbox> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SandboxInner {
            google: GoogleState::new(),
            meta: Arc::new(MetaState::new(settings)),
            twilio: Arc::new(TwilioState::new(twilio)),
            salesforce: Arc::new(SalesforceState::new()),
            base_url: OnceLock::new(),
        });
        let _ = state.base_url.set(format!("http://{addr}"));
        state.twilio.set_base_url(&format!("http://{addr}/twilio"));
        let (stop, mut stopped) = watch::channel(false);
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(Sandbox { state, addr, stop, task })
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.state.base_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn google(&self) -> &GoogleState {
        &self.state.google
    }

    /// The emulators' state, shared (for tasks that outlive a borrow of the sandbox).
    pub fn shared(&self) -> SandboxState {
        std::sync::Arc::clone(&self.state)
    }

    pub fn meta(&self) -> &Arc<MetaState> {
        &self.state.meta
    }

    /// Base URL for `sheets_base_url` in a source.
    pub fn sheets_base_url(&self) -> String {
        format!("{}/google/sheets/", self.base_url())
    }

    /// Base URL for `drive_base_url` in a source.
    pub fn drive_base_url(&self) -> String {
        format!("{}/google/", self.base_url())
    }

    pub fn twilio(&self) -> &Arc<TwilioState> {
        &self.state.twilio
    }

    /// Base URL for a `twilio` provider.
    pub fn twilio_base_url(&self) -> String {
        format!("{}/twilio", self.base_url())
    }

    pub fn salesforce(&self) -> &Arc<SalesforceState> {
        &self.state.salesforce
    }

    /// Login and instance URL for a `salesforce` source.
    pub fn salesforce_url(&self) -> String {
        format!("{}/salesforce", self.base_url())
    }

    /// Base URL for a `meta_cloud` provider.
    pub fn meta_base_url(&self) -> String {
        format!("{}/meta", self.base_url())
    }

    /// A service-account key JSON whose token_uri is this sandbox.
    pub fn service_account_key(&self, client_email: &str) -> String {
        self.state.google.create_service_account(&self.base_url(), client_email)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn router(state: SandboxState) -> Router {
    Router::new()
        .route("/google/token", post(google::token))
        .route("/google/drive/v3/files/{id}", get(google::drive_get))
        // `POST …/{id}:batchUpdate` arrives here with `{id}` = `demo:batchUpdate`. Google's
        // request bodies are limited by the emulator (400 in Google's shape), not by axum.
        .route(
            "/google/sheets/v4/spreadsheets/{id}",
            get(google::spreadsheets_get)
                .post(google::spreadsheets_post)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/google/sheets/v4/spreadsheets/{id}/values:batchGet", get(google::values_batch_get))
        .route(
            "/google/sheets/v4/spreadsheets/{id}/values:batchUpdate",
            post(google::values_batch_update).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/google/sheets/v4/spreadsheets/{id}/values/{range}",
            get(google::values_range)
                .put(google::values_range)
                .post(google::values_range)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/meta/{version}/{phone_id}/messages", post(meta::send))
        .route("/meta/{version}/{phone_id}", get(meta::phone_number))
        .route(
            "/meta/{version}/{phone_id}/media",
            post(meta::upload_media).layer(axum::extract::DefaultBodyLimit::max(110 << 20)),
        )
        .route("/meta/media-download/{token}", get(meta::media_download))
        .route("/meta/{version}/{phone_id}/message_templates", get(meta::message_templates))
        .route(
            "/twilio/2010-04-01/Accounts/{account}/Messages.json",
            post(twilio::create_message).get(twilio::list_messages),
        )
        .route("/twilio/2010-04-01/Accounts/{account}/Messages/{message}", get(twilio::fetch_message))
        .route("/twilio/2010-04-01/Accounts/{account}/Messages/{message}/Media/{media}", get(twilio::fetch_media))
        .route("/twilio-media-store/{token}", get(twilio::media_store))
        .route("/twilio/2010-04-01/Accounts/{account}", get(twilio::fetch_account))
        .route("/twilio/v1/Content/{sid}", get(twilio::fetch_content))
        .route("/twilio/v1/Content/{sid}/ApprovalRequests", get(twilio::fetch_content_approval))
        .route("/salesforce/services/oauth2/token", post(salesforce::token))
        .route("/salesforce/services/data/{version}/query", get(salesforce::query))
        .route("/salesforce/services/data/{version}/queryAll", get(salesforce::query_all))
        .route("/salesforce/services/data/{version}/query/{next}", get(salesforce::query_more))
        .route(
            "/salesforce/services/data/{version}/composite/sobjects",
            axum::routing::patch(salesforce::collection).post(salesforce::collection),
        )
        .route(
            "/salesforce/services/data/{version}/composite/sobjects/{object}/{field}",
            axum::routing::patch(salesforce::upsert),
        )
        .route("/salesforce/services/data/{version}/sobjects/{object}/describe", get(salesforce::describe))
        .route("/salesforce/services/data/{version}/sobjects/{object}/deleted", get(salesforce::deleted))
        .route("/salesforce/services/data/{version}/sobjects/{object}/deleted/", get(salesforce::deleted))
        .route("/salesforce/services/data/{version}/sobjects/{object}/updated", get(salesforce::updated))
        .route("/salesforce/services/data/{version}/sobjects/{object}/updated/", get(salesforce::updated))
        .route("/salesforce/services/data/{version}/limits", get(salesforce::limits))
        .route("/admin", get(admin_index))
        .route("/admin/google/service-accounts", post(admin_service_account))
        .route("/admin/google/spreadsheets/{id}", axum::routing::put(admin_seed))
        .route("/admin/google/spreadsheets/{id}/tabs/{tab}", get(admin_tab))
        .route("/admin/google/spreadsheets/{id}/tabs/{tab}/rows", post(admin_insert_row))
        .route("/admin/google/spreadsheets/{id}/tabs/{tab}/rows/{n}", axum::routing::delete(admin_delete_row))
        .route("/admin/google/spreadsheets/{id}/tabs/{tab}/edit", post(admin_edit))
        .route("/admin/google/spreadsheets/{id}/tabs/{tab}/sort", post(admin_sort))
        .route("/admin/google/spreadsheets/{id}/tabs/{tab}/grid", axum::routing::put(admin_grid))
        .route("/admin/google/faults", post(admin_google_fault).delete(admin_google_faults_clear))
        .route("/admin/google/after", post(admin_google_after))
        .route("/admin/google/release", post(admin_google_release))
        .route("/admin/google/requests", get(admin_google_requests))
        .route("/admin/meta/settings", get(admin_meta_settings).put(admin_meta_settings_put))
        .route("/admin/meta/templates", post(admin_meta_template))
        .route("/admin/meta/users", post(admin_meta_user))
        .route("/admin/meta/reply", post(admin_meta_reply))
        .route("/admin/meta/faults", post(admin_meta_fault))
        .route("/admin/meta/hold", post(admin_meta_hold))
        .route("/admin/meta/messages", get(admin_meta_messages))
        .route("/admin/twilio/settings", get(admin_twilio_settings).put(admin_twilio_settings_put))
        .route("/admin/twilio/contents", post(admin_twilio_content))
        .route("/admin/twilio/users", post(admin_twilio_user))
        .route("/admin/twilio/reply", post(admin_twilio_reply))
        .route("/admin/twilio/faults", post(admin_twilio_fault))
        .route("/admin/twilio/messages", get(admin_twilio_messages))
        .route("/admin/salesforce/objects", post(admin_sf_object))
        .route("/admin/salesforce/records/{object}", post(admin_sf_create).get(admin_sf_records))
        .route("/admin/salesforce/records/{object}/{id}", axum::routing::patch(admin_sf_update).delete(admin_sf_delete))
        .route("/admin/salesforce/faults", post(admin_sf_fault).delete(admin_sf_faults_clear))
        .route("/admin/salesforce/record-faults", post(admin_sf_record_fault))
        .route("/admin/salesforce/limits", axum::routing::put(admin_sf_limits))
        .route("/admin/salesforce/advance", post(admin_sf_advance))
        .route("/admin/salesforce/time-zone", axum::routing::put(admin_sf_time_zone))
        .route("/admin/salesforce/requests", get(admin_sf_requests))
        .with_state(state)
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": format!("{what} not found") }))).into_response()
}

fn ok() -> Response {
    Json(json!({ "ok": true })).into_response()
}

async fn admin_index(State(st): State<SandboxState>) -> Json<Value> {
    let b = st.base_url();
    Json(json!({
        "google_token_uri": format!("{b}/google/token"),
        "sheets_base_url": format!("{b}/google/sheets/"),
        "drive_base_url": format!("{b}/google/"),
        "meta_base_url": format!("{b}/meta"),
        "twilio_base_url": format!("{b}/twilio"),
        "salesforce_url": format!("{b}/salesforce"),
        "admin": [
            "POST /admin/google/service-accounts {client_email}",
            "PUT /admin/google/spreadsheets/{id} {time_zone, locale?, user_entered?, tabs:[{title, rows}], shared_with: [client_email]}",
            "GET /admin/google/spreadsheets/{id}/tabs/{tab}",
            "POST /admin/google/spreadsheets/{id}/tabs/{tab}/rows {values, at?}",
            "DELETE /admin/google/spreadsheets/{id}/tabs/{tab}/rows/{n}",
            "POST /admin/google/spreadsheets/{id}/tabs/{tab}/edit {key_column, key, column, value, user_entered?}",
            "POST /admin/google/spreadsheets/{id}/tabs/{tab}/sort {column, descending?}",
            "PUT /admin/google/spreadsheets/{id}/tabs/{tab}/grid {rows, columns}",
            "POST /admin/google/faults {status?, timeout?, delay_ms?, applied?, count?, scope?}",
            "DELETE /admin/google/faults",
            "POST /admin/google/after {kind, action:{action: sort|insert_row|delete_row|edit, spreadsheet, tab, …}}",
            "POST /admin/google/release",
            "GET /admin/google/requests",
            "GET|PUT /admin/meta/settings",
            "POST /admin/meta/templates {name, language, body_params, url_button?}",
            "POST /admin/meta/users {wa_id, name?, on_whatsapp?, reads?, read_after_ms?, reply?, reply_after_ms?}",
            "POST /admin/meta/reply {from, text, context?}",
            "POST /admin/meta/faults {code, http_status?, count?, mode?: sync|async|timeout|drop, to?, delay_ms?}",
            "POST /admin/meta/hold {hold}",
            "GET /admin/meta/messages",
            "GET|PUT /admin/twilio/settings",
            "POST /admin/twilio/contents {friendly_name, language, variables, url_button?} → {content_sid}",
            "POST /admin/twilio/users {number, name?, on_whatsapp?, reads?, read_after_ms?, reply?, reply_after_ms?}",
            "POST /admin/twilio/reply {from, text, replying_to?}",
            "POST /admin/twilio/faults {code, http_status?, count?, mode?: sync|async|timeout|drop|reset, to?, delay_ms?}",
            "GET /admin/twilio/messages",
            "POST /admin/salesforce/objects {name, prefix, fields:[{name, type, length?, reference_to?, external_id?, required?}]}",
            "POST /admin/salesforce/records/{object} {records:[{field: value}]} → {ids}",
            "GET /admin/salesforce/records/{object}",
            "PATCH /admin/salesforce/records/{object}/{id} {field: value}",
            "DELETE /admin/salesforce/records/{object}/{id}",
            "POST /admin/salesforce/faults {kind?, status?, error_code?, message?, expire_session?, timeout?, count?}",
            "DELETE /admin/salesforce/faults",
            "POST /admin/salesforce/record-faults {id?, status_code, message?, count?}",
            "PUT /admin/salesforce/limits {used, max}",
            "POST /admin/salesforce/advance {ms}",
            "PUT /admin/salesforce/time-zone {time_zone}",
            "GET /admin/salesforce/requests"
        ]
    }))
}

#[derive(Deserialize)]
struct ServiceAccountIn {
    client_email: String,
}

async fn admin_service_account(State(st): State<SandboxState>, Json(b): Json<ServiceAccountIn>) -> Response {
    let key = st.google.create_service_account(&st.base_url(), &b.client_email);
    (StatusCode::OK, [("content-type", "application/json")], key).into_response()
}

#[derive(Deserialize)]
struct TabIn {
    title: String,
    #[serde(default)]
    rows: Vec<Vec<Value>>,
}

#[derive(Deserialize)]
struct SeedIn {
    #[serde(default = "default_tz")]
    time_zone: String,
    #[serde(default = "default_locale")]
    locale: String,
    /// Parse strings as a person typing them (USER_ENTERED) instead of storing them as given.
    #[serde(default)]
    user_entered: bool,
    tabs: Vec<TabIn>,
    /// Service accounts (`client_email`) the spreadsheet is shared with, as a person does in
    /// its Share dialog: a sheet shared with nobody refuses every account, as at Google.
    #[serde(default)]
    shared_with: Vec<String>,
}

fn default_locale() -> String {
    google::DEFAULT_LOCALE.into()
}

fn default_tz() -> String {
    "America/Santiago".into()
}

async fn admin_seed(State(st): State<SandboxState>, Path(id): Path<String>, Json(b): Json<SeedIn>) -> Response {
    let input = if b.user_entered { google::ValueInput::UserEntered } else { google::ValueInput::Raw };
    st.google.seed_with(&id, &b.time_zone, &b.locale, input, b.tabs.into_iter().map(|t| (t.title, t.rows)).collect());
    for email in &b.shared_with {
        st.google.share(&id, email);
    }
    ok()
}

async fn admin_tab(State(st): State<SandboxState>, Path((id, tab)): Path<(String, String)>) -> Response {
    let rows = st.google.rows(&id, &tab);
    if rows.is_empty() {
        return not_found("tab");
    }
    Json(json!({ "rows": rows })).into_response()
}

#[derive(Deserialize)]
struct RowIn {
    values: Vec<Value>,
    #[serde(default)]
    at: Option<usize>,
}

async fn admin_insert_row(
    State(st): State<SandboxState>,
    Path((id, tab)): Path<(String, String)>,
    Json(b): Json<RowIn>,
) -> Response {
    if st.google.insert_row(&id, &tab, b.at, b.values) {
        ok()
    } else {
        not_found("spreadsheet or tab")
    }
}

async fn admin_delete_row(
    State(st): State<SandboxState>,
    Path((id, tab, n)): Path<(String, String, usize)>,
) -> Response {
    if st.google.delete_row(&id, &tab, n) {
        ok()
    } else {
        not_found("row")
    }
}

#[derive(Deserialize)]
struct EditIn {
    key_column: String,
    key: String,
    column: String,
    value: Value,
    #[serde(default)]
    user_entered: bool,
}

async fn admin_edit(
    State(st): State<SandboxState>,
    Path((id, tab)): Path<(String, String)>,
    Json(b): Json<EditIn>,
) -> Response {
    let edited = if b.user_entered {
        st.google.edit_by_key_typed(&id, &tab, &b.key_column, &b.key, &b.column, b.value)
    } else {
        st.google.edit_by_key(&id, &tab, &b.key_column, &b.key, &b.column, b.value)
    };
    if edited {
        ok()
    } else {
        not_found("row or column")
    }
}

#[derive(Deserialize)]
struct SortIn {
    column: String,
    #[serde(default)]
    descending: bool,
}

async fn admin_sort(
    State(st): State<SandboxState>,
    Path((id, tab)): Path<(String, String)>,
    Json(b): Json<SortIn>,
) -> Response {
    if st.google.sort_by(&id, &tab, &b.column, b.descending) {
        ok()
    } else {
        not_found("column")
    }
}

#[derive(Deserialize)]
struct GridIn {
    rows: usize,
    columns: usize,
}

async fn admin_grid(
    State(st): State<SandboxState>,
    Path((id, tab)): Path<(String, String)>,
    Json(b): Json<GridIn>,
) -> Response {
    if st.google.set_grid(&id, &tab, b.rows, b.columns) {
        ok()
    } else {
        not_found("spreadsheet or tab (or a zero size)")
    }
}

fn bad_request(reason: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": reason }))).into_response()
}

/// A fault that means nothing (unknown scope or field, no effect) is refused with the reason.
async fn admin_google_fault(State(st): State<SandboxState>, Json(f): Json<Value>) -> Response {
    let spec = match serde_json::from_value::<google::FaultSpec>(f) {
        Ok(s) => s,
        Err(e) => return bad_request(&format!("invalid fault: {e}")),
    };
    match st.google.try_inject(spec) {
        Ok(()) => ok(),
        Err(e) => bad_request(&format!("invalid fault: {e}")),
    }
}

async fn admin_google_faults_clear(State(st): State<SandboxState>) -> Response {
    st.google.clear_faults();
    ok()
}

#[derive(Deserialize)]
struct AfterIn {
    kind: String,
    action: Value,
}

async fn admin_google_after(State(st): State<SandboxState>, Json(b): Json<AfterIn>) -> Response {
    let Some(kind) = google::Kind::from_name(&b.kind) else {
        let names: Vec<&str> = google::Kind::ALL.iter().map(|k| k.name()).collect();
        return bad_request(&format!("unknown request kind '{}' ({})", b.kind, names.join(", ")));
    };
    let action = match serde_json::from_value::<google::SheetAction>(b.action) {
        Ok(a) => a,
        Err(e) => return bad_request(&format!("invalid action: {e}")),
    };
    match st.google.try_after_next(kind, action) {
        Ok(()) => ok(),
        Err(e) => bad_request(&format!("invalid action: {e}")),
    }
}

async fn admin_google_release(State(st): State<SandboxState>) -> Response {
    st.google.release_held();
    ok()
}

async fn admin_google_requests(State(st): State<SandboxState>) -> Json<Value> {
    Json(json!(st.google.counts()))
}

async fn admin_meta_settings(State(st): State<SandboxState>) -> Json<MetaSettings> {
    Json(st.meta.settings())
}

async fn admin_meta_settings_put(State(st): State<SandboxState>, Json(s): Json<MetaSettings>) -> Response {
    st.meta.update_settings(|cur| *cur = s);
    ok()
}

async fn admin_meta_template(State(st): State<SandboxState>, Json(t): Json<TemplateDef>) -> Response {
    st.meta.add_template(t);
    ok()
}

async fn admin_meta_user(State(st): State<SandboxState>, Json(u): Json<SimUser>) -> Response {
    st.meta.add_user(u);
    ok()
}

#[derive(Deserialize)]
struct ReplyIn {
    from: String,
    text: String,
    #[serde(default)]
    context: Option<String>,
}

async fn admin_meta_reply(State(st): State<SandboxState>, Json(r): Json<ReplyIn>) -> Response {
    let id = st.meta.user_says(r.from.trim_start_matches('+'), &r.text, r.context.as_deref());
    Json(json!({ "id": id })).into_response()
}

async fn admin_meta_fault(State(st): State<SandboxState>, Json(f): Json<MetaFault>) -> Response {
    match st.meta.try_inject(f) {
        Ok(()) => ok(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

#[derive(Deserialize)]
struct HoldIn {
    hold: bool,
}

/// Holds send answers back (`{"hold": true}`) or releases them.
async fn admin_meta_hold(State(st): State<SandboxState>, Json(h): Json<HoldIn>) -> Response {
    if h.hold {
        st.meta.hold_sends();
    } else {
        st.meta.release();
    }
    Json(json!({ "held": st.meta.held() })).into_response()
}

async fn admin_meta_messages(State(st): State<SandboxState>) -> Json<Value> {
    Json(json!(st.meta.sent()))
}

async fn admin_twilio_settings(State(st): State<SandboxState>) -> Json<TwilioSettings> {
    Json(st.twilio.settings())
}

async fn admin_twilio_settings_put(State(st): State<SandboxState>, Json(s): Json<TwilioSettings>) -> Response {
    st.twilio.update_settings(|cur| *cur = s);
    ok()
}

async fn admin_twilio_content(State(st): State<SandboxState>, Json(c): Json<ContentDef>) -> Response {
    let sid = st.twilio.add_content(c);
    Json(json!({ "content_sid": sid })).into_response()
}

async fn admin_twilio_user(State(st): State<SandboxState>, Json(u): Json<TwilioUser>) -> Response {
    st.twilio.add_user(u);
    ok()
}

#[derive(Deserialize)]
struct TwilioReplyIn {
    from: String,
    text: String,
    #[serde(default)]
    replying_to: Option<String>,
}

async fn admin_twilio_reply(State(st): State<SandboxState>, Json(r): Json<TwilioReplyIn>) -> Response {
    let sid = st.twilio.user_says(&r.from, &r.text, r.replying_to.as_deref());
    Json(json!({ "sid": sid })).into_response()
}

async fn admin_twilio_fault(State(st): State<SandboxState>, Json(f): Json<TwilioFault>) -> Response {
    match st.twilio.try_inject(f) {
        Ok(()) => ok(),
        Err(e) => bad_request(&e),
    }
}

async fn admin_twilio_messages(State(st): State<SandboxState>) -> Json<Value> {
    Json(json!(st.twilio.sent()))
}

async fn admin_sf_object(State(st): State<SandboxState>, Json(def): Json<salesforce::ObjectDef>) -> Response {
    if def.prefix.len() != 3 || !def.prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return bad_request("prefix must be three letters or digits");
    }
    st.salesforce.define_object(def);
    ok()
}

#[derive(Deserialize)]
struct SfRecordsIn {
    records: Vec<serde_json::Map<String, Value>>,
}

async fn admin_sf_create(
    State(st): State<SandboxState>,
    Path(object): Path<String>,
    Json(b): Json<SfRecordsIn>,
) -> Response {
    match st.salesforce.create_many(&object, b.records) {
        Ok(ids) => Json(json!({ "ids": ids })).into_response(),
        Err(e) => bad_request(&e),
    }
}

async fn admin_sf_records(State(st): State<SandboxState>, Path(object): Path<String>) -> Json<Value> {
    Json(json!({ "records": st.salesforce.records(&object) }))
}

async fn admin_sf_update(
    State(st): State<SandboxState>,
    Path((object, id)): Path<(String, String)>,
    Json(fields): Json<serde_json::Map<String, Value>>,
) -> Response {
    match st.salesforce.update(&object, &id, fields) {
        Ok(()) => ok(),
        Err(e) => bad_request(&e),
    }
}

async fn admin_sf_delete(State(st): State<SandboxState>, Path((object, id)): Path<(String, String)>) -> Response {
    if st.salesforce.delete(&object, &id) {
        ok()
    } else {
        not_found("record")
    }
}

async fn admin_sf_fault(State(st): State<SandboxState>, Json(f): Json<SfFault>) -> Response {
    st.salesforce.inject(f);
    ok()
}

async fn admin_sf_faults_clear(State(st): State<SandboxState>) -> Response {
    st.salesforce.clear_faults();
    ok()
}

async fn admin_sf_record_fault(State(st): State<SandboxState>, Json(f): Json<RecordFault>) -> Response {
    st.salesforce.inject_record_error(f);
    ok()
}

#[derive(Deserialize)]
struct SfLimitsIn {
    used: u64,
    max: u64,
}

async fn admin_sf_limits(State(st): State<SandboxState>, Json(b): Json<SfLimitsIn>) -> Response {
    st.salesforce.set_usage(b.used, b.max);
    ok()
}

#[derive(Deserialize)]
struct SfAdvanceIn {
    ms: u64,
}

async fn admin_sf_advance(State(st): State<SandboxState>, Json(b): Json<SfAdvanceIn>) -> Response {
    st.salesforce.advance(std::time::Duration::from_millis(b.ms));
    ok()
}

#[derive(Deserialize)]
struct SfTimeZoneIn {
    time_zone: String,
}

async fn admin_sf_time_zone(State(st): State<SandboxState>, Json(b): Json<SfTimeZoneIn>) -> Response {
    if b.time_zone.parse::<chrono_tz::Tz>().is_err() {
        return bad_request("time_zone must be an IANA time zone such as America/Santiago");
    }
    st.salesforce.set_time_zone(&b.time_zone);
    ok()
}

async fn admin_sf_requests(State(st): State<SandboxState>) -> Json<Value> {
    Json(json!(st.salesforce.counts()))
}
