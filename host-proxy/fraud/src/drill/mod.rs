//! `fraud drill`: seeded traffic of humans and bots, and how well the rules
//! tell them apart.
//!
//! Humans browse: a page and its assets, think time, now and then a 404 or a
//! mistyped password; one in ten is a power user; some use the mobile app
//! (an HTTP library's user agent); some share one corporate NAT. Bots come in seven kinds:
//! declared crawlers, credential stuffing, scraping, 404 probing, low-and-slow
//! (machine-regular timing), IP spraying across a few /24s, and a scraper
//! logged in behind the same NAT as the humans. Search engines crawl too:
//! Googlebot and Bingbot from their operators' addresses, whose reverse and
//! forward DNS agree (the drill brings its own zone), must never be blocked;
//! scrapers that borrow Googlebot's user agent from elsewhere are bots.
//! Every client knows its
//! addresses and subjects, so a block on an address, a subnet or a subject
//! token can be traced back to the clients it hits.
//!
//! Recall is the share of abusive clients blocked; precision the share of
//! blocked clients that are abusive; the false-positive rate the share of
//! humans blocked.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::crawlers::Zone;
use crate::record::format_ts;

mod report;
mod search;
pub use report::{evaluate, DrillReport, KindScore};

/// 2026-12-01T00:00:00Z: drill traffic starts here.
pub const START_MS: i64 = 1_796_083_200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Human,
    NatHuman,
    SearchEngine,
    Crawler,
    FakeCrawler,
    CredentialStuffing,
    Scraper,
    NotFoundProbe,
    LowAndSlow,
    IpSpraying,
    NatBot,
}

impl Kind {
    pub const BOTS: [Kind; 7] = [
        Kind::Crawler,
        Kind::CredentialStuffing,
        Kind::Scraper,
        Kind::NotFoundProbe,
        Kind::LowAndSlow,
        Kind::IpSpraying,
        Kind::NatBot,
    ];
    pub fn is_bot(self) -> bool {
        !matches!(self, Kind::Human | Kind::NatHuman | Kind::SearchEngine)
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Human => "human",
            Kind::NatHuman => "human behind NAT",
            Kind::SearchEngine => "search engine (DNS-verified)",
            Kind::Crawler => "crawler",
            Kind::FakeCrawler => "fake Googlebot",
            Kind::CredentialStuffing => "credential stuffing",
            Kind::Scraper => "scraper",
            Kind::NotFoundProbe => "404 probing",
            Kind::LowAndSlow => "low-and-slow",
            Kind::IpSpraying => "IP spraying",
            Kind::NatBot => "bot behind shared NAT",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub kind: Kind,
    pub ips: Vec<IpAddr>,
    pub subjects: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DrillConfig {
    pub seed: u64,
    pub humans: usize,
    pub nat_humans: usize,
    pub bots_per_kind: usize,
    /// Length of the traffic, in minutes.
    pub minutes: u32,
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            seed: 7,
            humans: 1500,
            nat_humans: 30,
            bots_per_kind: 8,
            minutes: 20,
        }
    }
}

/// The generated traffic: NDJSON lines in time order, who sent them, and
/// the DNS its crawler claims are checked against.
pub struct Traffic {
    pub lines: Vec<String>,
    pub clients: Vec<Client>,
    pub zone: Zone,
}

const BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
];
const CRAWLERS: &[&str] = &[
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
    "Mozilla/5.0 (compatible; DotBot/1.2; +https://opensiteexplorer.org/dotbot; help@moz.com)",
];
const APPS: &[&str] = &[
    "okhttp/4.12.0",
    "ShopApp/5.2.1 CFNetwork/1568.200.51 Darwin/24.1.0",
    "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/AP2A)",
];
const SCRIPTS: &[&str] = &[
    "python-requests/2.32.3",
    "Go-http-client/1.1",
    "curl/8.5.0",
    "okhttp/4.12.0",
];
const SCANNERS: &[&str] = &[
    "sqlmap/1.8#stable (https://sqlmap.org)",
    "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:001)",
    "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",
];
const PROBES: &[&str] = &[
    "/wp-login.php",
    "/wp-admin/",
    "/.env",
    "/.git/config",
    "/phpmyadmin/",
    "/admin.php",
    "/xmlrpc.php",
    "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
    "/server-status",
    "/.aws/credentials",
    "/config.json",
    "/backup.zip",
    "/actuator/env",
    "/cgi-bin/luci",
    "/boaform/admin/formLogin",
    "/HNAP1/",
];

struct Gen {
    rng: ChaCha8Rng,
    lines: Vec<(i64, usize, String)>,
    end_ms: i64,
}

/// Who sends a request: the client, its address, user agent and subject.
#[derive(Clone, Copy)]
struct Who<'a> {
    id: usize,
    ip: IpAddr,
    ua: &'a str,
    sub: &'a str,
}

impl Gen {
    fn emit(&mut self, w: Who<'_>, ts: i64, method: &str, path: &str, status: u16) {
        if ts >= self.end_ms {
            return;
        }
        let bytes = self.rng.random_range(200..60_000u32);
        let dur = self.rng.random_range(1.0..80.0f64);
        let mut l = String::with_capacity(320);
        let _ = write!(
            l,
            r#"{{"ts":"{}","client_ip":"{}","method":"{}","host":"shop.example","path":{},"status":{},"bytes":{},"duration_ms":{:.1},"user_agent":{},"referer":"","jwt_sub":{}}}"#,
            format_ts(ts),
            w.ip,
            method,
            json_str(path),
            status,
            bytes,
            dur,
            json_str(w.ua),
            json_str(w.sub)
        );
        self.lines.push((ts, w.id, l));
    }

    fn exp_ms(&mut self, mean_ms: f64) -> i64 {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        (-u.ln() * mean_ms) as i64
    }

    fn human_ip(&mut self) -> IpAddr {
        if self.rng.random_bool(0.2) {
            let mut o = [0u8; 16];
            o[0] = 0x20;
            o[1] = 0x01;
            o[2] = 0x0d;
            o[3] = 0xb8;
            for b in &mut o[4..] {
                *b = self.rng.random();
            }
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            IpAddr::V4(Ipv4Addr::new(
                self.rng.random_range(24..100),
                self.rng.random(),
                self.rng.random(),
                self.rng.random_range(1..255),
            ))
        }
    }

    fn bot_ip(&mut self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            self.rng.random_range(100..200),
            self.rng.random(),
            self.rng.random(),
            self.rng.random_range(1..255),
        ))
    }

    /// A signed-in user of the mobile app: an HTTP library's user agent
    /// (automation by its looks), API calls in bursts when a screen opens.
    fn app_user(&mut self, id: usize, ip: IpAddr, sub: &str) {
        let span = self.end_ms - START_MS;
        let mut t = START_MS + self.rng.random_range(0..span * 3 / 4);
        let ua = APPS[id % APPS.len()];
        let w = Who { id, ip, ua, sub };
        for _ in 0..self.rng.random_range(3..30) {
            for call in ["/api/v1/feed", "/api/v1/notifications", "/api/v1/cart"] {
                let dt = self.rng.random_range(10..400);
                self.emit(w, t + dt, "GET", call, 200);
            }
            if self.rng.random_bool(0.3) {
                let p = format!("/api/v1/products/{}", self.rng.random_range(0..5000));
                self.emit(w, t + 500, "GET", &p, 200);
            }
            t += 2_000 + self.exp_ms(25_000.0);
        }
    }

    /// One human: a login (maybe after a typo), then page views with assets and think time.
    fn human(&mut self, id: usize, ip: IpAddr, ua: &str, sub: Option<String>) {
        let span = self.end_ms - START_MS;
        let mut t = START_MS + self.rng.random_range(0..span * 3 / 4);
        let logged_in = sub.clone().unwrap_or_default();
        let anon = Who {
            id,
            ip,
            ua,
            sub: "",
        };
        let w = Who {
            sub: &logged_in,
            ..anon
        };
        if sub.is_some() {
            if self.rng.random_bool(0.1) {
                self.emit(anon, t, "POST", "/login", 401);
                t += self.rng.random_range(3_000..12_000);
            }
            self.emit(anon, t, "POST", "/login", 200);
            t += self.rng.random_range(300..1500);
        }
        // One in ten is a power user: many pages, short think time.
        let power = self.rng.random_bool(0.1);
        let pages = if power {
            self.rng.random_range(40..120)
        } else {
            self.rng.random_range(3..40)
        };
        let think_ms = if power { 5_000.0 } else { 15_000.0 };
        for _ in 0..pages {
            let (path, status) = match self.rng.random_range(0..10) {
                0 => ("/".to_owned(), 200),
                1 => ("/cart".to_owned(), 200),
                2 => (
                    format!("/search?q=item{}", self.rng.random_range(0..500)),
                    200,
                ),
                _ => {
                    let missing = self.rng.random_bool(0.02);
                    (
                        format!("/products/{}", self.rng.random_range(0..5000)),
                        if missing { 404 } else { 200 },
                    )
                }
            };
            self.emit(w, t, "GET", &path, status);
            let assets = self.rng.random_range(2..7);
            for a in 0..assets {
                let p = match a {
                    0 => "/static/app.3f9a.js".to_owned(),
                    1 => "/static/site.css".to_owned(),
                    _ => format!("/img/{}.jpg", self.rng.random_range(0..5000)),
                };
                let dt = self.rng.random_range(20..900);
                self.emit(w, t + dt, "GET", &p, 200);
            }
            t += 1_000 + self.exp_ms(think_ms);
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Generates the drill's traffic (deterministic for a seed).
pub fn generate(cfg: &DrillConfig) -> Traffic {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        lines: Vec::new(),
        end_ms: START_MS + i64::from(cfg.minutes) * 60_000,
    };
    let span = g.end_ms - START_MS;
    let mut clients = Vec::new();
    for _ in 0..cfg.humans {
        let id = clients.len();
        let ip = g.human_ip();
        let ua = BROWSERS[g.rng.random_range(0..BROWSERS.len())];
        let sub = g
            .rng
            .random_bool(0.5)
            .then(|| format!("user{id}@example.com"));
        match &sub {
            Some(s) if g.rng.random_bool(0.2) => g.app_user(id, ip, s),
            _ => g.human(id, ip, ua, sub.clone()),
        }
        clients.push(Client {
            kind: Kind::Human,
            ips: vec![ip],
            subjects: sub.into_iter().collect(),
        });
    }
    // One corporate NAT: many browsers (distinct builds) behind one address.
    let nat = IpAddr::V4(Ipv4Addr::new(62, 140, 17, 9));
    for k in 0..cfg.nat_humans {
        let id = clients.len();
        let ua = format!("{} build/{k}", BROWSERS[k % BROWSERS.len()]);
        let sub = g
            .rng
            .random_bool(0.8)
            .then(|| format!("user{id}@corp.example"));
        g.human(id, nat, &ua, sub.clone());
        clients.push(Client {
            kind: Kind::NatHuman,
            ips: vec![nat],
            subjects: sub.into_iter().collect(),
        });
    }
    for kind in Kind::BOTS {
        for b in 0..cfg.bots_per_kind {
            let id = clients.len();
            let mut ips = vec![g.bot_ip()];
            let mut subjects = Vec::new();
            let ip = ips[0];
            let mut t = START_MS + g.rng.random_range(0..span / 2);
            match kind {
                Kind::Crawler => {
                    let ua = CRAWLERS[b % CRAWLERS.len()];
                    let w = Who {
                        id,
                        ip,
                        ua,
                        sub: "",
                    };
                    for i in 0..400 {
                        let p = format!("/products/{}", i * 7 + b);
                        g.emit(w, t, "GET", &p, 200);
                        t += g.rng.random_range(800..3200);
                    }
                }
                Kind::CredentialStuffing => {
                    let ua = if b % 2 == 0 {
                        SCRIPTS[b % SCRIPTS.len()]
                    } else {
                        BROWSERS[b % BROWSERS.len()]
                    };
                    let w = Who {
                        id,
                        ip,
                        ua,
                        sub: "",
                    };
                    for _ in 0..250 {
                        if g.rng.random_bool(0.03) {
                            let victim =
                                format!("user{}@example.com", g.rng.random_range(0..cfg.humans));
                            g.emit(w, t, "POST", "/login", 200);
                            g.emit(Who { sub: &victim, ..w }, t + 400, "GET", "/account", 200);
                            subjects.push(victim);
                        } else {
                            g.emit(w, t, "POST", "/login", 401);
                        }
                        t += g.rng.random_range(300..2500);
                    }
                }
                Kind::Scraper => {
                    let w = Who {
                        id,
                        ip,
                        ua: BROWSERS[b % BROWSERS.len()],
                        sub: "",
                    };
                    let rate_gap = g.rng.random_range(180..450);
                    for _ in 0..900 {
                        let p = format!("/products/{}", g.rng.random_range(0..50_000));
                        g.emit(w, t, "GET", &p, 200);
                        t += g.rng.random_range(rate_gap / 2..rate_gap * 3 / 2);
                    }
                }
                Kind::NotFoundProbe => {
                    let ua = if b % 2 == 0 {
                        SCANNERS[b % SCANNERS.len()]
                    } else {
                        BROWSERS[b % BROWSERS.len()]
                    };
                    let w = Who {
                        id,
                        ip,
                        ua,
                        sub: "",
                    };
                    for i in 0..60 {
                        let p = PROBES[(i + b) % PROBES.len()];
                        let status = if g.rng.random_bool(0.85) { 404 } else { 403 };
                        g.emit(w, t, "GET", p, status);
                        t += g.rng.random_range(200..3000);
                    }
                }
                Kind::LowAndSlow => {
                    let w = Who {
                        id,
                        ip,
                        ua: BROWSERS[b % BROWSERS.len()],
                        sub: "",
                    };
                    let period = g.rng.random_range(15_000..30_000i64);
                    t = START_MS + g.rng.random_range(0..60_000);
                    while t < g.end_ms {
                        if b % 2 == 0 {
                            g.emit(w, t, "POST", "/login", 401);
                        } else {
                            let p = format!("/products/{}", g.rng.random_range(0..50_000));
                            g.emit(w, t, "GET", &p, 200);
                        }
                        t += period + g.rng.random_range(-period / 30..period / 30);
                    }
                }
                Kind::IpSpraying => {
                    ips.clear();
                    let nets: Vec<[u8; 3]> = (0..2)
                        .map(|_| [g.rng.random_range(100..200), g.rng.random(), g.rng.random()])
                        .collect();
                    for _ in 0..300 {
                        let n = nets[g.rng.random_range(0..nets.len())];
                        let ip =
                            IpAddr::V4(Ipv4Addr::new(n[0], n[1], n[2], g.rng.random_range(1..255)));
                        ips.push(ip);
                        let ua = BROWSERS[g.rng.random_range(0..BROWSERS.len())];
                        let w = Who {
                            id,
                            ip,
                            ua,
                            sub: "",
                        };
                        for _ in 0..g.rng.random_range(1..4) {
                            g.emit(w, t, "POST", "/login", 401);
                            t += g.rng.random_range(100..1500);
                        }
                    }
                }
                Kind::NatBot => {
                    ips = vec![nat];
                    let sub = format!("scraper{b}@corp.example");
                    let w = Who {
                        id,
                        ip: nat,
                        ua: BROWSERS[b % BROWSERS.len()],
                        sub: &sub,
                    };
                    for _ in 0..700 {
                        let p = format!("/products/{}", g.rng.random_range(0..50_000));
                        g.emit(w, t, "GET", &p, 200);
                        t += g.rng.random_range(150..550);
                    }
                    subjects.push(sub);
                }
                Kind::Human | Kind::NatHuman | Kind::SearchEngine | Kind::FakeCrawler => {}
            }
            clients.push(Client {
                kind,
                ips,
                subjects,
            });
        }
    }
    // Generated last, so the traffic above is the same as without them.
    let zone = g.search_engines(&mut clients, cfg.bots_per_kind);
    g.lines.sort_by_key(|(ts, client, _)| (*ts, *client));
    Traffic {
        lines: g.lines.into_iter().map(|(_, _, l)| l).collect(),
        clients,
        zone,
    }
}
