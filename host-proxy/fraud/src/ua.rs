//! User-agent classes: declared crawlers (the crawler-user-agents patterns,
//! vendored as data), vulnerability scanners, scripted HTTP clients,
//! browsers, and none.

use regex::RegexSet;

const CRAWLERS: &str = include_str!("../data/crawler-user-agents.txt");

/// Tools whose user agent is itself evidence of probing.
const SCANNERS: &[&str] = &[
    "sqlmap",
    "nikto",
    "nmap",
    "masscan",
    "zgrab",
    "nuclei",
    "wpscan",
    "dirbuster",
    "gobuster",
    "dirb/",
    "ffuf",
    "wfuzz",
    "acunetix",
    "nessus",
    "openvas",
    "qualys",
    "netsparker",
    "burp",
    "jaeles",
    "arachni",
    "w3af",
    "skipfish",
    "whatweb",
    "httpx",
    "zmeu",
    "morfeus",
    "fuzz faster",
];

/// HTTP libraries and command-line clients: automation, not necessarily abuse.
const SCRIPTS: &[&str] = &[
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww-perl",
    "axios/",
    "node-fetch",
    "undici",
    "httpclient",
    "restsharp",
    "powershell",
    "ruby",
    "php/",
    "guzzlehttp",
    "scrapy",
    "headlesschrome",
    "phantomjs",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UaClass {
    Browser,
    Crawler,
    Scanner,
    Script,
    Empty,
    /// Claims a verifiable crawler, and DNS says it is not
    /// ([`crate::crawlers`]); never returned by [`UaClassifier::classify`].
    FakeCrawler,
}

impl UaClass {
    pub const COUNT: usize = 6;
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn label(self) -> &'static str {
        match self {
            UaClass::Browser => "browser",
            UaClass::Crawler => "crawler",
            UaClass::Scanner => "scanner",
            UaClass::Script => "script",
            UaClass::Empty => "empty",
            UaClass::FakeCrawler => "fake_crawler",
        }
    }
}

/// Compiled once; classification is one pass of a [`RegexSet`] plus two
/// substring scans.
#[derive(Clone)]
pub struct UaClassifier {
    crawlers: RegexSet,
}

#[derive(Debug, thiserror::Error)]
#[error("crawler pattern list does not compile: {0}")]
pub struct PatternError(#[from] regex::Error);

impl UaClassifier {
    pub fn new() -> Result<Self, PatternError> {
        let patterns = CRAWLERS
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let crawlers = regex::RegexSetBuilder::new(patterns)
            .size_limit(64 << 20)
            .build()?;
        Ok(UaClassifier { crawlers })
    }

    pub fn classify(&self, ua: &str) -> UaClass {
        let ua = ua.trim();
        if ua.is_empty() || ua == "-" {
            return UaClass::Empty;
        }
        let lower = ua.to_ascii_lowercase();
        if SCANNERS.iter().any(|s| lower.contains(s)) {
            return UaClass::Scanner;
        }
        if SCRIPTS.iter().any(|s| lower.contains(s)) {
            return UaClass::Script;
        }
        if self.crawlers.is_match(ua) {
            return UaClass::Crawler;
        }
        if !lower.starts_with("mozilla/") && !lower.starts_with("opera/") {
            return UaClass::Script;
        }
        UaClass::Browser
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_from_the_crawler_list_is_not_a_browser() {
        let c = UaClassifier::new().expect("patterns compile");
        let examples = include_str!("../data/crawler-instances.txt");
        let mut n = 0;
        for ua in examples
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let class = c.classify(ua);
            assert!(
                class != UaClass::Browser && class != UaClass::Empty,
                "{ua:?} classified {class:?}"
            );
            n += 1;
        }
        assert!(n > 1000, "only {n} examples");
    }

    #[test]
    fn browsers_scripts_scanners_and_empty() {
        let c = UaClassifier::new().expect("patterns compile");
        for ua in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        ] {
            assert_eq!(c.classify(ua), UaClass::Browser, "{ua}");
        }
        assert_eq!(c.classify("python-requests/2.32.3"), UaClass::Script);
        assert_eq!(c.classify("curl/8.5.0"), UaClass::Script);
        assert_eq!(
            c.classify("sqlmap/1.8#stable (https://sqlmap.org)"),
            UaClass::Scanner
        );
        assert_eq!(
            c.classify("Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:000001)"),
            UaClass::Scanner
        );
        assert_eq!(c.classify(""), UaClass::Empty);
        assert_eq!(c.classify("-"), UaClass::Empty);
    }
}
