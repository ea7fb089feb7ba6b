//! The countries the simulator knows: codes, languages, time zones, phone
//! and mail formats, names, and the named hubs and branches of the regional
//! network (whose cities name the numbered places of the other shapes).

/// The simulator's own spelling of a country code it knows.
pub fn country_code(code: &str) -> Option<&'static str> {
    COUNTRIES.iter().map(|c| c.code).find(|c| c.eq_ignore_ascii_case(code))
}

pub(super) struct Country {
    pub(super) code: &'static str,
    pub(super) locale: &'static str,
    pub(super) tz: &'static str,
    pub(super) phone: &'static str,
    /// Digits after `phone` that make a valid E.164 number.
    pub(super) digits: usize,
    pub(super) names: &'static [&'static str],
    pub(super) mail: &'static str,
    /// Hours ahead of UTC (standard time), for the day's rhythm.
    pub(super) utc: i64,
    pub(super) hubs: &'static [&'static str],
    pub(super) branches: &'static [&'static str],
}

impl Country {
    /// A phone number from 8 random digits.
    pub(super) fn number(&self, digits: u32) -> String {
        format!("{}{}", self.phone, &digits.to_string()[..self.digits])
    }
}

pub(super) const COUNTRIES: [Country; 5] = [
    Country {
        code: "FR",
        locale: "fr-FR",
        tz: "Europe/Paris",
        phone: "+3361",
        digits: 7,
        names: &["Léa Martin", "Hugo Bernard", "Chloé Dubois", "Théo Laurent", "Zoé Lefèvre", "Raphaël Moreau"],
        mail: "exemple.fr",
        utc: 1,
        hubs: &["FR-LYS-HUB", "FR-PAR-HUB", "FR-MRS-HUB"],
        branches: &[
            "FR-PAR-12",
            "FR-PAR-15",
            "FR-LYS-03",
            "FR-MRS-01",
            "FR-TLS-02",
            "FR-NTE-04",
            "FR-LIL-05",
            "FR-BDX-06",
        ],
    },
    Country {
        code: "CN",
        locale: "zh-CN",
        tz: "Asia/Shanghai",
        phone: "+86138",
        digits: 8,
        names: &["王芳", "李伟", "张敏", "刘洋", "陈静", "杨磊"],
        mail: "example.cn",
        utc: 8,
        hubs: &["CN-SHA-HUB", "CN-SZX-HUB", "CN-PEK-HUB"],
        branches: &[
            "CN-SHA-07",
            "CN-SHA-11",
            "CN-SZX-02",
            "CN-PEK-05",
            "CN-CAN-03",
            "CN-HGH-08",
            "CN-CTU-01",
            "CN-WUH-04",
        ],
    },
    Country {
        code: "US",
        locale: "en-US",
        tz: "America/New_York",
        phone: "+1212555",
        digits: 4,
        names: &["Emma Johnson", "Liam Smith", "Olivia Brown", "Noah Davis", "Ava Wilson", "Mason Clark"],
        mail: "example.com",
        utc: -5,
        hubs: &["US-EWR-HUB", "US-ORD-HUB", "US-LAX-HUB"],
        branches: &[
            "US-NYC-14",
            "US-NYC-22",
            "US-CHI-03",
            "US-LAX-09",
            "US-BOS-02",
            "US-SEA-05",
            "US-ATL-07",
            "US-DAL-01",
        ],
    },
    Country {
        code: "DE",
        locale: "de-DE",
        tz: "Europe/Berlin",
        phone: "+49151",
        digits: 8,
        names: &["Lena Müller", "Jonas Schmidt", "Mia Schneider", "Felix Weber", "Hannah Becker", "Lukas Fischer"],
        mail: "beispiel.de",
        utc: 1,
        hubs: &["DE-FRA-HUB", "DE-LEJ-HUB", "DE-HAM-HUB"],
        branches: &[
            "DE-BER-03",
            "DE-BER-08",
            "DE-MUC-02",
            "DE-HAM-05",
            "DE-CGN-01",
            "DE-FRA-04",
            "DE-STR-06",
            "DE-DUS-07",
        ],
    },
    Country {
        code: "ES",
        locale: "es-ES",
        tz: "Europe/Madrid",
        phone: "+346",
        digits: 8,
        names: &["Lucía García", "Hugo Fernández", "Martina López", "Pablo Martínez", "Sofía Sánchez", "Álvaro Pérez"],
        mail: "ejemplo.es",
        utc: 1,
        hubs: &["ES-MAD-HUB", "ES-BCN-HUB", "ES-VLC-HUB"],
        branches: &[
            "ES-MAD-01",
            "ES-MAD-04",
            "ES-BCN-02",
            "ES-VLC-03",
            "ES-SVQ-05",
            "ES-ZAZ-06",
            "ES-BIO-07",
            "ES-AGP-08",
        ],
    },
];
