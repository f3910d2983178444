//! Search (tantivy, in memory): one keyword over concerts, performers and venues.
//!
//! Every name is indexed twice: as character bigrams (those with a non-ASCII character) after
//! removing whitespace, so Korean matches regardless of spacing ("여름공연" and "여름 공연"
//! share 여름/름공/공연), and as lowercase words (for typo-tolerant and prefix matching of Latin words). Titles weigh twice
//! as much as artists. Date range and kind are filters (they do not change scores); a hit
//! must score at least 30 % of the best hit. The index is rebuilt from the database at start and
//! follows every catalog write.

use std::ops::Bound;
use std::sync::Mutex;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;
use tantivy::collector::TopDocs;
use tantivy::query::{
    BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query as TQuery, RangeQuery, TermQuery,
};
use tantivy::schema::{
    Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TantivyDocument, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{TextAnalyzer, Token, TokenStream, Tokenizer};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Term, doc};

use crate::db::Db;
use crate::error::{ApiError, Context};
use crate::state::AppState;

/// Hits below this share of the best hit's score are dropped.
pub const MIN_RELATIVE_SCORE: f32 = 0.3;
/// Most hits returned.
pub const MAX_HITS: usize = 50;

/// Character bigrams of the text with whitespace removed, lowercased.
#[derive(Clone, Debug, Default)]
pub struct Bigrams;

/// The token stream of [`Bigrams`].
#[derive(Debug)]
pub struct BigramStream {
    tokens: Vec<Token>,
    next: usize,
}

impl Tokenizer for Bigrams {
    type TokenStream<'a> = BigramStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> BigramStream {
        BigramStream { tokens: bigram_tokens(text), next: 0 }
    }
}

fn bigram_tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_lowercase).collect();
    let grams: Vec<String> = match chars.len() {
        0 => Vec::new(),
        1 => vec![chars[0].to_string()],
        _ => chars.windows(2).map(|w| w.iter().collect()).collect(),
    };
    // Latin text is served by the word fields; its bigrams ("er", "es", …) would only match
    // half the index and slow every query down.
    let grams: Vec<String> = grams.into_iter().filter(|g| !g.is_ascii()).collect();
    grams
        .into_iter()
        .enumerate()
        .map(|(i, text)| Token { offset_from: i, offset_to: i + 1, position: i, text, position_length: 1 })
        .collect()
}

impl TokenStream for BigramStream {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    key: Field,
    kind: Field,
    id: Field,
    title: Field,
    title_gram: Field,
    title_word: Field,
    artist_gram: Field,
    artist_word: Field,
    starts_on: Field,
}

/// The search index.
pub struct Search {
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    f: Fields,
}

impl std::fmt::Debug for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Search").finish_non_exhaustive()
    }
}

/// One document to index.
#[derive(Debug, Clone)]
pub struct Doc<'a> {
    /// `concert`, `performer` or `venue`.
    pub kind: &'static str,
    /// Its id.
    pub id: i64,
    /// Title or name.
    pub title: &'a str,
    /// Artists (concerts).
    pub artists: &'a [String],
    /// Start (concerts), Unix ms.
    pub starts_on: Option<i64>,
}

fn tantivy_err(e: tantivy::TantivyError) -> ApiError {
    ApiError::Internal { context: "search index", source: Box::new(e) }
}

impl Search {
    /// An empty in-memory index.
    pub fn new() -> Result<Self, ApiError> {
        let mut b = Schema::builder();
        let gram = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("bigram")
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        let word = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default().set_tokenizer("raw").set_index_option(IndexRecordOption::WithFreqs),
        );
        let f = Fields {
            key: b.add_text_field("key", STRING),
            kind: b.add_text_field("kind", STRING | STORED),
            id: b.add_i64_field("id", STORED),
            title: b.add_text_field("title", STORED),
            title_gram: b.add_text_field("title_gram", gram.clone()),
            title_word: b.add_text_field("title_word", word.clone()),
            artist_gram: b.add_text_field("artist_gram", gram),
            artist_word: b.add_text_field("artist_word", word),
            starts_on: b.add_i64_field("starts_on", INDEXED),
        };
        let index = Index::create_in_ram(b.build());
        index.tokenizers().register("bigram", TextAnalyzer::builder(Bigrams).build());
        let writer = index.writer(50_000_000).map_err(tantivy_err)?;
        let reader =
            index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(tantivy_err)?;
        Ok(Search { reader, writer: Mutex::new(writer), f })
    }

    fn document(&self, d: &Doc<'_>) -> TantivyDocument {
        let f = self.f;
        let mut doc = doc!(
            f.key => format!("{}:{}", d.kind, d.id),
            f.kind => d.kind,
            f.id => d.id,
            f.title => d.title,
            f.title_gram => d.title,
        );
        for w in words(d.title) {
            doc.add_text(f.title_word, w);
        }
        for a in d.artists {
            doc.add_text(f.artist_gram, a);
            for w in words(a) {
                doc.add_text(f.artist_word, w);
            }
        }
        if let Some(t) = d.starts_on {
            doc.add_i64(f.starts_on, t);
        }
        doc
    }

    /// Adds or replaces documents and makes them visible.
    pub fn upsert(&self, docs: &[Doc<'_>]) -> Result<(), ApiError> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        for d in docs {
            w.delete_term(Term::from_field_text(self.f.key, &format!("{}:{}", d.kind, d.id)));
            w.add_document(self.document(d)).map_err(tantivy_err)?;
        }
        w.commit().map_err(tantivy_err)?;
        self.reader.reload().map_err(tantivy_err)
    }

    /// Removes a document (a deleted concert is never returned).
    pub fn remove(&self, kind: &str, id: i64) -> Result<(), ApiError> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.delete_term(Term::from_field_text(self.f.key, &format!("{kind}:{id}")));
        w.commit().map_err(tantivy_err)?;
        self.reader.reload().map_err(tantivy_err)
    }

    /// Rebuilds everything from the database; returns how many documents were indexed.
    pub async fn rebuild(&self, db: &Db) -> Result<usize, ApiError> {
        let concerts =
            sqlx::query("SELECT id, title, artists, starts_on FROM concerts WHERE deleted_at IS NULL")
                .fetch_all(&db.pool)
                .await
                .context("loading concerts to index")?;
        let performers = sqlx::query("SELECT id, name FROM performers")
            .fetch_all(&db.pool)
            .await
            .context("loading performers")?;
        let venues =
            sqlx::query("SELECT id, name FROM venues").fetch_all(&db.pool).await.context("loading venues")?;
        let concerts: Vec<(i64, String, Vec<String>, i64)> = concerts
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    serde_json::from_str(&r.get::<String, _>(2)).unwrap_or_default(),
                    r.get(3),
                )
            })
            .collect();
        let mut docs: Vec<Doc<'_>> = concerts
            .iter()
            .map(|(id, t, a, s)| Doc { kind: "concert", id: *id, title: t, artists: a, starts_on: Some(*s) })
            .collect();
        let names: Vec<(&'static str, i64, String)> = performers
            .iter()
            .map(|r| ("performer", r.get(0), r.get(1)))
            .chain(venues.iter().map(|r| ("venue", r.get(0), r.get(1))))
            .collect();
        docs.extend(names.iter().map(|(k, id, n)| Doc {
            kind: k,
            id: *id,
            title: n,
            artists: &[],
            starts_on: None,
        }));
        {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            w.delete_all_documents().map_err(tantivy_err)?;
            for d in &docs {
                w.add_document(self.document(d)).map_err(tantivy_err)?;
            }
            w.commit().map_err(tantivy_err)?;
        }
        self.reader.reload().map_err(tantivy_err)?;
        Ok(docs.len())
    }

    fn text_query(&self, q: &str) -> Box<dyn TQuery> {
        let f = self.f;
        let mut should: Vec<(Occur, Box<dyn TQuery>)> = Vec::new();
        let boosted = |q: Box<dyn TQuery>, b: f32| -> (Occur, Box<dyn TQuery>) {
            (Occur::Should, Box::new(BoostQuery::new(q, b)))
        };
        for g in bigram_tokens(q) {
            for (field, boost) in [(f.title_gram, 2.0), (f.artist_gram, 1.0)] {
                let t = TermQuery::new(Term::from_field_text(field, &g.text), IndexRecordOption::WithFreqs);
                should.push(boosted(Box::new(t), boost));
            }
        }
        for w in words(q).into_iter().filter(|w| w.is_ascii() && w.len() >= 2) {
            // Short words must match exactly as a prefix; longer ones forgive one typo.
            let distance = if w.len() >= 4 { 1 } else { 0 };
            for (field, boost) in [(f.title_word, 2.0), (f.artist_word, 1.0)] {
                let t = FuzzyTermQuery::new_prefix(Term::from_field_text(field, &w), distance, true);
                should.push(boosted(Box::new(t), boost));
            }
        }
        Box::new(BooleanQuery::new(should))
    }

    /// Hits for `q`, best first: `(kind, id, title, score)`.
    pub fn search(
        &self,
        q: &str,
        from: Option<i64>,
        to: Option<i64>,
        kind: Option<&str>,
    ) -> Result<Vec<(String, i64, String, f32)>, ApiError> {
        let f = self.f;
        let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = vec![(Occur::Must, self.text_query(q))];
        if from.is_some() || to.is_some() {
            let lo = from.map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_i64(f.starts_on, v)));
            let hi = to.map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_i64(f.starts_on, v)));
            // A filter: it narrows, it does not score.
            clauses.push((Occur::Must, Box::new(BoostQuery::new(Box::new(RangeQuery::new(lo, hi)), 0.0))));
        }
        if let Some(k) = kind {
            let t = TermQuery::new(Term::from_field_text(f.kind, k), IndexRecordOption::Basic);
            clauses.push((Occur::Must, Box::new(BoostQuery::new(Box::new(t), 0.0))));
        }
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&BooleanQuery::new(clauses), &TopDocs::with_limit(MAX_HITS).order_by_score())
            .map_err(tantivy_err)?;
        let best = top.first().map_or(0.0, |(s, _)| *s);
        let mut hits = Vec::new();
        for (score, addr) in top {
            if score < best * MIN_RELATIVE_SCORE || score <= 0.0 {
                continue;
            }
            let d: TantivyDocument = searcher.doc(addr).map_err(tantivy_err)?;
            let text = |field| d.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let id = d.get_first(f.id).and_then(|v| v.as_i64()).unwrap_or_default();
            hits.push((text(f.kind), id, text(f.title), score));
        }
        Ok(hits)
    }
}

/// `GET /api/v1/search?q=&from=&to=&kind=` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: String,
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
}

fn date(field: &'static str, v: &str, end_of_day: bool) -> Result<i64, ApiError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(v, &fmt).map_err(|_| ApiError::invalid(field, "must be a date YYYY-MM-DD"))?;
    let t = d.midnight().assume_utc().unix_timestamp() * 1000;
    Ok(if end_of_day { t + 86_400_000 - 1 } else { t })
}

/// `GET /api/v1/search`
pub async fn handler(
    State(s): State<AppState>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let text = q.q.trim();
    if text.is_empty() || text.chars().count() > 100 {
        return Err(ApiError::invalid("q", "must be 1 to 100 characters"));
    }
    let kind = match q.kind.as_deref() {
        None | Some("") => None,
        Some(k @ ("concert" | "performer" | "venue")) => Some(k),
        Some(_) => return Err(ApiError::invalid("kind", "must be concert, performer or venue")),
    };
    let from = q.from.as_deref().filter(|v| !v.is_empty()).map(|v| date("from", v, false)).transpose()?;
    let to = q.to.as_deref().filter(|v| !v.is_empty()).map(|v| date("to", v, true)).transpose()?;
    let hits = s.search.search(text, from, to, kind)?;
    let hits: Vec<_> = hits
        .into_iter()
        .map(|(kind, id, title, score)| json!({"kind": kind, "id": id, "title": title, "score": (score * 1000.0).round() / 1000.0}))
        .collect();
    Ok(Json(json!({"hits": hits})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigrams_ignore_spacing() {
        let a: Vec<String> = bigram_tokens("여름 공연").into_iter().map(|t| t.text).collect();
        let b: Vec<String> = bigram_tokens("여름공연").into_iter().map(|t| t.text).collect();
        assert_eq!(a, b);
        assert_eq!(a, vec!["여름", "름공", "공연"]);
    }
}
