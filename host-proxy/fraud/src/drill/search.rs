//! The drill's search engines: crawlers from their operators' addresses,
//! whose reverse and forward DNS agree in the drill's own zone, and
//! scrapers that borrow Googlebot's user agent from elsewhere.

use std::net::{IpAddr, Ipv4Addr};

use rand::RngExt;

use super::{Client, Gen, Kind, Who, START_MS};
use crate::crawlers::Zone;

const GOOGLEBOT: &str = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; +http://www.google.com/bot.html) Chrome/131.0.6778.204 Safari/537.36";
const BINGBOT: &str = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/131.0.0.0 Safari/537.36";

impl Gen {
    /// A crawl: `pages` GETs at a crawler's pace.
    fn crawl(&mut self, w: Who<'_>, pages: usize, salt: usize) {
        let span = self.end_ms - START_MS;
        let mut t = START_MS + self.rng.random_range(0..span / 2);
        for i in 0..pages {
            let p = format!("/products/{}", i * 11 + salt);
            self.emit(w, t, "GET", &p, 200);
            t += self.rng.random_range(800..3200);
        }
    }

    /// `n` search-engine crawlers from their operators' addresses (reverse
    /// and forward DNS agree), and `n` scrapers with Googlebot's user agent
    /// from elsewhere: half name googlebot.com in their own reverse zone
    /// (Google's forward zone does not know them), half have no PTR.
    pub(super) fn search_engines(&mut self, clients: &mut Vec<Client>, n: usize) -> Zone {
        let mut zone = Zone::default();
        for b in 0..n {
            let id = clients.len();
            let host = (b % 250 + 1) as u8;
            let (ip, name, ua) = if b % 2 == 0 {
                let ip = IpAddr::V4(Ipv4Addr::new(66, 249, 66, host));
                (
                    ip,
                    format!("crawl-66-249-66-{host}.googlebot.com"),
                    GOOGLEBOT,
                )
            } else {
                let ip = IpAddr::V4(Ipv4Addr::new(157, 55, 39, host));
                (
                    ip,
                    format!("msnbot-157-55-39-{host}.search.msn.com"),
                    BINGBOT,
                )
            };
            zone.ptr(ip, &format!("{name}."));
            zone.addr(&name, ip);
            self.crawl(
                Who {
                    id,
                    ip,
                    ua,
                    sub: "",
                },
                400,
                b,
            );
            clients.push(Client {
                kind: Kind::SearchEngine,
                ips: vec![ip],
                subjects: Vec::new(),
            });
        }
        for b in 0..n {
            let id = clients.len();
            let ip = self.bot_ip();
            if b % 2 == 0 {
                if let IpAddr::V4(a) = ip {
                    let o = a.octets();
                    let name = format!("crawl-{}-{}-{}-{}.googlebot.com.", o[0], o[1], o[2], o[3]);
                    zone.ptr(ip, &name);
                }
            }
            self.crawl(
                Who {
                    id,
                    ip,
                    ua: GOOGLEBOT,
                    sub: "",
                },
                400,
                b,
            );
            clients.push(Client {
                kind: Kind::FakeCrawler,
                ips: vec![ip],
                subjects: Vec::new(),
            });
        }
        zone
    }
}
