//! weft driven by matrix-rust-sdk (the SDK of Element X), through simplified sliding sync:
//!
//! * two users log in; their `SyncService` runs (room list + encryption connections) and
//!   the `RoomListService` sees rooms appear (invited, joined, counted), be renamed (its
//!   name search finds the new name, not the old) and receive messages;
//! * a room's `Timeline` paginates back through older history;
//! * an encrypted room decrypts both ways (keys travel through the e2ee and to_device
//!   extensions);
//! * a pusher's push reaches a fake push gateway on loopback, and the notification client
//!   fetches the event that push names.
//!
//! Each test starts its own `weft` (the binary built next to this test, or `WEFT_BIN`) on
//! a free loopback port with a SQLite database in a temporary directory. Every wait is
//! for a positive condition, bounded by [`WAIT`].

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use matrix_sdk::RoomDisplayName;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::account::register;
use matrix_sdk::ruma::api::client::push::{PusherIds, PusherInit, PusherKind, set_pusher};
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, Dummy};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::push::HttpPusherData;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, RoomId};
use matrix_sdk::sliding_sync::VersionBuilder;
use matrix_sdk::{Client, Room};
use matrix_sdk_ui::eyeball_im::{Vector, VectorDiff};
use matrix_sdk_ui::notification_client::{
    NotificationClient, NotificationEvent, NotificationProcessSetup, NotificationStatus,
};
use matrix_sdk_ui::room_list_service::filters::new_filter_normalized_match_room_name;
use matrix_sdk_ui::room_list_service::{RoomListItem, RoomListLoadingState};
use matrix_sdk_ui::sync_service::SyncService;
use matrix_sdk_ui::timeline::{RoomExt, Timeline};

/// Longest any condition may take to hold (a loaded 2-core CI machine).
const WAIT: Duration = Duration::from_secs(60);

/// A weft process on a free port; killed and cleaned up on drop.
struct Weft {
    child: Child,
    dir: PathBuf,
    base: String,
}

impl Drop for Weft {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.dir.join("weft.log"))
        {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- weft log (last lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        if std::env::var_os("WEFT_SDK_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn weft_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<this test> → target/<profile>/weft
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("weft"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p weft) or set WEFT_BIN",
        bin.display()
    );
    bin
}

async fn start_weft() -> Weft {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = std::env::temp_dir().join(format!(
        "weft-sdk-{}-{port}-{}",
        std::process::id(),
        Instant::now().elapsed().subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("weft.toml");
    std::fs::write(
        &config,
        format!(
            "server_name = \"weft.test\"\ndata_dir = \"{d}\"\n\
             [database]\nurl = \"sqlite://{d}/weft.db\"\n\
             [listeners]\nclient = \"127.0.0.1:{port}\"\nfederation = \"\"\n\
             [registration]\nopen = true\n[federation]\nenabled = false\n\
             [outbound]\nallowed_addresses = [\"127.0.0.1\"]\n\
             [logging]\nfilter = \"info,weft=debug\"\n",
            d = dir.display()
        ),
    )
    .expect("write config");
    let log = std::fs::File::create(dir.join("weft.log")).expect("log file");
    let child = Command::new(weft_binary())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn weft");
    let base = format!("http://127.0.0.1:{port}");
    let weft = Weft { child, dir, base };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "weft did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    weft
}

/// A registered, logged-in client speaking simplified sliding sync.
async fn user(weft: &Weft, name: &str) -> Client {
    let client = Client::builder()
        .homeserver_url(&weft.base)
        .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
        .build()
        .await
        .expect("client");
    let mut req = register::v3::Request::new();
    req.username = Some(name.to_owned());
    req.password = Some(format!("pw-{name}"));
    req.initial_device_display_name = Some(format!("{name}'s sdk"));
    req.auth = Some(AuthData::Dummy(Dummy::new()));
    client.matrix_auth().register(req).await.expect("register");
    assert!(client.user_id().is_some(), "registration logged in");
    client
}

async fn sync_service(client: &Client) -> Arc<SyncService> {
    let service = Arc::new(
        SyncService::builder(client.clone())
            .build()
            .await
            .expect("sync service"),
    );
    service.start().await;
    service
}

/// Waits until `cond` answers `Some`, polling.
async fn until<T, F, Fut>(what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn room_of(client: &Client, id: &RoomId, what: &str) -> Room {
    until(what, || async { client.get_room(id) }).await
}

/// The bodies of the messages in a timeline, oldest first.
async fn bodies(timeline: &Timeline) -> Vec<String> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|i| i.as_event())
        .filter_map(|e| e.content().as_message().map(|m| m.body().to_owned()))
        .collect()
}

async fn wait_for_body(timeline: &Timeline, body: &str) {
    until(&format!("message {body:?}"), || async {
        bodies(timeline)
            .await
            .iter()
            .any(|b| b == body)
            .then_some(())
    })
    .await;
}

async fn create(client: &Client, name: &str, invite: &[&Client]) -> OwnedRoomId {
    let mut req = create_room::v3::Request::new();
    req.name = Some(name.to_owned());
    req.invite = invite
        .iter()
        .filter_map(|c| c.user_id().map(ToOwned::to_owned))
        .collect();
    client
        .create_room(req)
        .await
        .expect("create room")
        .room_id()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn room_list_sees_rooms_appear_and_messages() {
    let weft = start_weft().await;
    let alice = user(&weft, "alice").await;
    let bob = user(&weft, "bob").await;
    let alice_sync = sync_service(&alice).await;
    let bob_sync = sync_service(&bob).await;
    let bob_list = bob_sync.room_list_service();
    let all_rooms = bob_list.all_rooms().await.expect("all_rooms");

    // A room appears in bob's list once he is invited and joins.
    let room_id = create(&alice, "First name", &[&bob]).await;
    until("the invite in bob's room list", || async {
        bob_list.room(&room_id).ok()
    })
    .await;
    bob.join_room_by_id(&room_id).await.expect("join");
    until("the room list's count", || async {
        match all_rooms.loading_state().get() {
            RoomListLoadingState::Loaded {
                maximum_number_of_rooms: Some(n),
            } if n >= 1 => Some(()),
            _ => None,
        }
    })
    .await;
    let bob_room = until("the joined room in bob's room list", || async {
        bob_list
            .room(&room_id)
            .ok()
            .filter(|r| r.state() == matrix_sdk::RoomState::Joined)
    })
    .await;
    until("the room's name", || async {
        (bob_room.name().as_deref() == Some("First name")).then_some(())
    })
    .await;

    let alice_room = room_of(&alice, &room_id, "alice's room").await;

    // The room is renamed: the room list, searched by name as Element X's search box does,
    // shows it under its new name (an m.room.name that reached bob through sliding sync's
    // required_state), and the room's info follows.
    let (entries, controller) = all_rooms.entries_with_dynamic_adapters(20);
    let mut entries = Box::pin(entries);
    assert!(
        controller.set_filter(Box::new(new_filter_normalized_match_room_name(
            "second name"
        )))
    );
    let mut shown: Vector<RoomListItem> = Vector::new();
    alice_room
        .set_name("Second name".to_owned())
        .await
        .expect("rename");
    let deadline = Instant::now() + WAIT;
    while !shown.iter().any(|r| {
        r.room_id().as_str() == room_id.as_str()
            && r.cached_display_name().map(|n| n.to_string()).as_deref() == Some("Second name")
    }) {
        let left = deadline.saturating_duration_since(Instant::now());
        let diffs = tokio::time::timeout(left, entries.next())
            .await
            .expect("timed out waiting for the renamed room in bob's room list")
            .expect("the room list's stream ended");
        for d in diffs {
            d.apply(&mut shown);
        }
    }
    assert_eq!(shown.len(), 1, "only the renamed room matches its new name");
    assert_eq!(bob_room.name().as_deref(), Some("Second name"));
    assert_eq!(
        bob_room.display_name().await.expect("display name"),
        RoomDisplayName::Named("Second name".to_owned())
    );
    controller.set_filter(Box::new(new_filter_normalized_match_room_name(
        "first name",
    )));
    // A new filter starts with a reset of the list: under the old name, nothing.
    let old = tokio::time::timeout(WAIT, async {
        loop {
            let diffs = entries.next().await.expect("the room list's stream ended");
            if let Some(VectorDiff::Reset { values }) = diffs.into_iter().next() {
                return values;
            }
        }
    })
    .await
    .expect("timed out waiting for the list under the old name");
    assert!(old.is_empty(), "no room is listed under the old name");

    // Messages arrive in bob's timeline, and alice's.
    bob_list.subscribe_to_rooms(&[&room_id]).await;
    let bob_timeline = bob_room.timeline().await.expect("timeline");
    alice_room
        .send(RoomMessageEventContent::text_plain("hello bob"))
        .await
        .expect("send");
    wait_for_body(&bob_timeline, "hello bob").await;
    bob_room
        .send(RoomMessageEventContent::text_plain("hello alice"))
        .await
        .expect("send");
    let alice_timeline = alice_room.timeline().await.expect("timeline");
    wait_for_body(&alice_timeline, "hello alice").await;

    // A second room joins the list, counted by the server's list.
    let second = create(&alice, "Another", &[&bob]).await;
    bob.join_room_by_id(&second).await.expect("join");
    until("two rooms in the list", || async {
        match all_rooms.loading_state().get() {
            RoomListLoadingState::Loaded {
                maximum_number_of_rooms: Some(n),
            } if n >= 2 => Some(()),
            _ => None,
        }
    })
    .await;
    alice_sync.stop().await;
    bob_sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeline_paginates_back() {
    let weft = start_weft().await;
    let alice = user(&weft, "alice").await;
    let bob = user(&weft, "bob").await;
    let room_id = create(&alice, "History", &[&bob]).await;
    // Alice writes history before bob ever syncs (plain /sync is enough for her).
    alice
        .sync_once(SyncSettings::default())
        .await
        .expect("sync");
    let alice_room = room_of(&alice, &room_id, "alice's room").await;
    for i in 0..40 {
        alice_room
            .send(RoomMessageEventContent::text_plain(format!("old {i}")))
            .await
            .expect("send");
    }
    let bob_sync = sync_service(&bob).await;
    bob.join_room_by_id(&room_id).await.expect("join");
    let bob_room = until("bob's joined room", || async {
        bob.get_room(&room_id)
            .filter(|r| r.state() == matrix_sdk::RoomState::Joined)
    })
    .await;
    // Opening a room, as Element X does: subscribe to it, then build its timeline.
    bob_sync
        .room_list_service()
        .subscribe_to_rooms(&[&room_id])
        .await;
    let timeline = bob_room.timeline().await.expect("timeline");
    let deadline = Instant::now() + WAIT;
    while !bodies(&timeline).await.contains(&"old 0".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "pagination did not reach the start"
        );
        let hit_start = timeline.paginate_backwards(20).await.expect("paginate");
        if hit_start {
            break;
        }
    }
    // Older history arrived by pagination, in order and without duplicates.
    let all = bodies(&timeline).await;
    let numbers: Vec<u32> = all
        .iter()
        .filter_map(|b| b.strip_prefix("old ")?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] + 1 == w[1]),
        "out of order or duplicated: {all:?}"
    );
    assert_eq!(numbers.last(), Some(&39), "{all:?}");
    assert!(
        numbers.first().is_some_and(|n| *n <= 1),
        "did not page back: {all:?}"
    );
    bob_sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_room_decrypts_both_ways() {
    let weft = start_weft().await;
    let alice = user(&weft, "alice").await;
    let bob = user(&weft, "bob").await;
    let alice_sync = sync_service(&alice).await;
    let bob_sync = sync_service(&bob).await;
    let room_id = create(&alice, "Secret", &[&bob]).await;
    let alice_room = room_of(&alice, &room_id, "alice's room").await;
    alice_room.enable_encryption().await.expect("encryption");
    let bob_room = room_of(&bob, &room_id, "bob's invite").await;
    bob.join_room_by_id(&room_id).await.expect("join");
    until("bob joined", || async {
        (bob_room.state() == matrix_sdk::RoomState::Joined).then_some(())
    })
    .await;
    // Alice must see bob's join before she encrypts for him.
    until("bob in alice's member list", || async {
        let members = alice_room
            .members(matrix_sdk::RoomMemberships::JOIN)
            .await
            .ok()?;
        (members.len() == 2).then_some(())
    })
    .await;
    let bob_timeline = bob_room.timeline().await.expect("timeline");
    let alice_timeline = alice_room.timeline().await.expect("timeline");
    alice_room
        .send(RoomMessageEventContent::text_plain("for bob's eyes"))
        .await
        .expect("send encrypted");
    wait_for_body(&bob_timeline, "for bob's eyes").await;
    bob_room
        .send(RoomMessageEventContent::text_plain("and for alice's"))
        .await
        .expect("send encrypted");
    wait_for_body(&alice_timeline, "and for alice's").await;
    // They were encrypted on the wire: the server holds m.room.encrypted events.
    let page = bob_room
        .messages(matrix_sdk::room::MessagesOptions::backward())
        .await
        .expect("messages");
    assert!(
        page.chunk.iter().any(|e| e.encryption_info().is_some()),
        "no event came encrypted from the server"
    );
    alice_sync.stop().await;
    bob_sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notification_client_fetches_the_pushed_event() {
    let weft = start_weft().await;
    let alice = user(&weft, "alice").await;
    let bob = user(&weft, "bob").await;
    let bob_sync = sync_service(&bob).await;
    // Bob's phone: a pusher whose gateway is a listener on loopback.
    let gateway = TcpListener::bind("127.0.0.1:0").expect("gateway");
    let url = format!(
        "http://{}/_matrix/push/v1/notify",
        gateway.local_addr().expect("gateway address")
    );
    let pushes = std::thread::spawn(move || gateway_receive(gateway));
    let pusher = PusherInit {
        ids: PusherIds::new("bobs-phone".into(), "org.example.weft.sdk".into()),
        kind: PusherKind::Http(HttpPusherData::new(url)),
        app_display_name: "weft test".into(),
        device_display_name: "Bob's phone".into(),
        profile_tag: None,
        lang: "en".into(),
    };
    bob.send(set_pusher::v3::Request::post(pusher.into()))
        .await
        .expect("set pusher");
    let room_id = create(&alice, "Ping", &[&bob]).await;
    bob.join_room_by_id(&room_id).await.expect("join");
    alice
        .sync_once(SyncSettings::default())
        .await
        .expect("sync");
    let alice_room = room_of(&alice, &room_id, "alice's room").await;
    let sent = alice_room
        .send(RoomMessageEventContent::text_plain("wake up, bob"))
        .await
        .expect("send");
    // What the push gateway hands the app: a room and an event ID.
    let push = tokio::task::spawn_blocking(move || pushes.join())
        .await
        .expect("gateway thread")
        .expect("gateway thread ended");
    let pushed_room: OwnedRoomId = push["notification"]["room_id"]
        .as_str()
        .and_then(|r| r.try_into().ok())
        .expect("room_id in the push");
    let pushed_event: OwnedEventId = push["notification"]["event_id"]
        .as_str()
        .and_then(|e| e.try_into().ok())
        .expect("event_id in the push");
    assert_eq!(pushed_room, room_id);
    assert_eq!(pushed_event, sent.response.event_id);
    assert_eq!(push["notification"]["devices"][0]["pushkey"], "bobs-phone");
    let notifications = NotificationClient::new(
        bob.clone(),
        NotificationProcessSetup::SingleProcess {
            sync_service: Arc::clone(&bob_sync),
        },
    )
    .await
    .expect("notification client");
    let status = notifications
        .get_notification(&pushed_room, &pushed_event)
        .await
        .expect("get_notification");
    let NotificationStatus::Event(item) = status else {
        panic!("no notification: {status:?}");
    };
    let NotificationEvent::Timeline(event) = &item.event else {
        panic!("not a timeline event");
    };
    assert_eq!(event.event_id(), sent.response.event_id);
    assert_eq!(event.sender(), alice.user_id().expect("alice"));
    assert_eq!(item.room_computed_display_name, "Ping");
    bob_sync.stop().await;
}

/// The fake push gateway: answers every request `200 {}` and returns the body of the first
/// push about a room message event (pushes for the invite and join come first). Gives up
/// after [`WAIT`].
fn gateway_receive(l: TcpListener) -> serde_json::Value {
    use std::io::{Read, Write};
    l.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let Ok((mut conn, _)) = l.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let body = loop {
            let Ok(n) = conn.read(&mut chunk) else {
                break None;
            };
            if n == 0 {
                break None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break serde_json::from_slice::<serde_json::Value>(&buf[end + 4..end + 4 + len])
                    .ok();
            }
        };
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        if let Some(b) = body
            && b["notification"]["type"] == "m.room.message"
        {
            return b;
        }
    }
    panic!("no push reached the gateway within {WAIT:?}");
}
