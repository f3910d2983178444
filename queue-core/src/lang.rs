//! The language of the pages people read (the waiting page, the storefront): Korean or
//! English, whichever `Accept-Language` names first (browsers list by preference), English
//! when it names neither.

/// A page language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// 한국어.
    Ko,
    /// English.
    En,
}

impl Lang {
    /// From an `Accept-Language` value (empty when the header is absent).
    pub fn from_accept_language(accept: &str) -> Lang {
        for part in accept.split(',') {
            let tag = part.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if tag.starts_with("ko") {
                return Lang::Ko;
            }
            if tag.starts_with("en") {
                return Lang::En;
            }
        }
        Lang::En
    }

    /// The BCP 47 code, for `lang=` and `Content-Language`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ko => "ko",
            Lang::En => "en",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lang;

    #[test]
    fn first_known_language_wins() {
        assert_eq!(Lang::from_accept_language("ko-KR,ko;q=0.9,en;q=0.8"), Lang::Ko);
        assert_eq!(Lang::from_accept_language("fr-FR, en-US;q=0.8, ko;q=0.5"), Lang::En);
        assert_eq!(Lang::from_accept_language("de, KO"), Lang::Ko);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
        assert_eq!(Lang::from_accept_language("ja"), Lang::En);
    }
}
