//! The SOQL subset the Salesforce emulator understands, parsed as Salesforce parses it and
//! refused in Salesforce's words.
//!
//! `SELECT <field or relationship path>, … FROM <object> [WHERE <condition>] [ORDER BY <path>
//! [ASC|DESC] [NULLS FIRST|LAST], …] [LIMIT n]`. Conditions: `=`, `!=`, `<>`, `<`, `<=`, `>`,
//! `>=`, `LIKE`, `IN (…)`, `NOT IN (…)`, `AND`, `OR`, `NOT`, parentheses; `AND` and `OR` may not
//! be mixed without parentheses (Salesforce refuses that too). Literals: `'strings'` (with `\'`
//! escapes), numbers, `true`/`false`, `null`, unquoted dates `2026-11-24`, unquoted date-times
//! `2026-11-24T13:00:00Z` / `…+03:00` / `…-03:00`, and `TODAY`, `YESTERDAY`, `TOMORROW`.
//! Keywords are case-insensitive; field and object names are resolved against the emulator's
//! schema by the caller.

/// A literal as written in the query.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    /// `YYYY-MM-DD`, unquoted.
    Date(chrono::NaiveDate),
    /// An unquoted date-time literal, in UTC milliseconds.
    DateTime(i64),
    /// `TODAY`, `YESTERDAY`, `TOMORROW`: days from today in the org's time zone.
    RelativeDay(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
}

/// A `WHERE` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Compare { field: String, op: Op, value: Literal, column: usize },
    In { field: String, values: Vec<Literal>, negated: bool, column: usize },
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    pub field: String,
    pub descending: bool,
    pub nulls_last: bool,
}

/// A parsed query; names are as written (resolution is the caller's).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `(name, column)` in the order written.
    pub fields: Vec<(String, usize)>,
    pub object: String,
    pub object_column: usize,
    pub filter: Option<Cond>,
    pub order: Vec<OrderBy>,
    pub limit: Option<usize>,
}

/// Why a query was refused: Salesforce's `errorCode` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Date(chrono::NaiveDate),
    DateTime(i64),
    Sym(&'static str),
}

struct Token {
    tok: Tok,
    /// 1-based column where it starts.
    column: usize,
    text: String,
}

/// Salesforce's message for a query it cannot parse: the query, a caret under the column,
/// `ERROR at Row:1:Column:N` and what was wrong.
pub fn malformed(query: &str, column: usize, what: &str) -> QueryError {
    let line = query.replace('\n', " ");
    let caret = " ".repeat(column.saturating_sub(1));
    QueryError {
        code: "MALFORMED_QUERY",
        message: format!("\n{line}\n{caret}^\nERROR at Row:1:Column:{column}\n{what}"),
    }
}

/// The same shape for a query that parses but names what the object does not have.
pub fn invalid_field(query: &str, column: usize, what: &str) -> QueryError {
    let mut e = malformed(query, column, what);
    e.code = "INVALID_FIELD";
    e
}

fn tokenize(q: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(malformed(q, column, "line 1:{column} mismatched character '<EOF>' expecting '''"))
                    }
                    Some('\\') => {
                        let escaped = match chars.get(i + 1) {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some(other) => *other,
                            None => return Err(malformed(q, column, "invalid escape sequence")),
                        };
                        s.push(escaped);
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(Token { tok: Tok::Str(s), column, text: chars[column - 1..i].iter().collect() });
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        if let Some(sym) = ["!=", "<>", "<=", ">="].into_iter().find(|s| *s == two) {
            out.push(Token { tok: Tok::Sym(sym), column, text: two });
            i += 2;
            continue;
        }
        if let Some(sym) = ["(", ")", ",", "=", "<", ">"].into_iter().find(|s| s.starts_with(c)) {
            out.push(Token { tok: Tok::Sym(sym), column, text: c.to_string() });
            i += 1;
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || c == '+' || c == ':' {
            let start = i;
            while i < chars.len() {
                let ch = chars[i];
                let sign_in_literal = (ch == '+' || ch == '-' || ch == ':') && i > start;
                if ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || sign_in_literal || (ch == '-' && i == start)
                {
                    i += 1;
                } else {
                    break;
                }
            }
            let text: String = chars[start..i].iter().collect();
            let tok = literal_token(&text).unwrap_or_else(|| Tok::Word(text.clone()));
            out.push(Token { tok, column, text });
            continue;
        }
        return Err(malformed(q, column, &format!("unexpected token: '{c}'")));
    }
    Ok(out)
}

/// Numbers, dates and date-times written without quotes.
fn literal_token(text: &str) -> Option<Tok> {
    let first = text.chars().next()?;
    if !(first.is_ascii_digit() || first == '-' || first == '+') {
        return None;
    }
    if let Ok(n) = text.parse::<f64>() {
        return Some(Tok::Num(n));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if text.len() == 10 {
            return Some(Tok::Date(d));
        }
    }
    let normalized =
        if let Some(stripped) = text.strip_suffix('Z') { format!("{stripped}+00:00") } else { text.to_string() };
    // Salesforce accepts seconds without fractions in literals (fractions are not documented).
    chrono::DateTime::parse_from_str(&normalized, "%Y-%m-%dT%H:%M:%S%:z")
        .ok()
        .filter(|_| normalized.len() == 25)
        .map(|t| Tok::DateTime(t.timestamp_millis()))
}

struct Parser<'a> {
    q: &'a str,
    toks: Vec<Token>,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Word(w), .. }) if w.eq_ignore_ascii_case(kw))
    }

    fn sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Sym(x), .. }) if *x == s)
    }

    fn unexpected(&self) -> QueryError {
        match self.peek() {
            Some(t) => malformed(self.q, t.column, &format!("unexpected token: {}", t.text)),
            None => malformed(self.q, self.q.chars().count() + 1, "unexpected token: <EOF>"),
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), QueryError> {
        if self.keyword(kw) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn name(&mut self) -> Result<(String, usize), QueryError> {
        match self.peek() {
            Some(Token { tok: Tok::Word(w), column, .. }) if !is_reserved(w) => {
                let out = (w.clone(), *column);
                self.pos += 1;
                Ok(out)
            }
            _ => Err(self.unexpected()),
        }
    }

    fn query(&mut self) -> Result<Query, QueryError> {
        if self.toks.is_empty() {
            return Err(QueryError {
                code: "MALFORMED_QUERY",
                message: "SOQL statements cannot be empty or null".into(),
            });
        }
        self.expect_keyword("SELECT")?;
        let mut fields = vec![self.name()?];
        while self.sym(",") {
            self.pos += 1;
            fields.push(self.name()?);
        }
        self.expect_keyword("FROM")?;
        let (object, object_column) = self.name()?;
        let mut filter = None;
        if self.keyword("WHERE") {
            self.pos += 1;
            filter = Some(self.condition()?);
        }
        let mut order = Vec::new();
        if self.keyword("ORDER") {
            self.pos += 1;
            self.expect_keyword("BY")?;
            loop {
                let (field, _) = self.name()?;
                let mut descending = false;
                if self.keyword("ASC") {
                    self.pos += 1;
                } else if self.keyword("DESC") {
                    self.pos += 1;
                    descending = true;
                }
                // Salesforce's default: nulls first ascending, last descending.
                let mut nulls_last = descending;
                if self.keyword("NULLS") {
                    self.pos += 1;
                    if self.keyword("FIRST") {
                        nulls_last = false;
                    } else if self.keyword("LAST") {
                        nulls_last = true;
                    } else {
                        return Err(self.unexpected());
                    }
                    self.pos += 1;
                }
                order.push(OrderBy { field, descending, nulls_last });
                if self.sym(",") {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        let mut limit = None;
        if self.keyword("LIMIT") {
            self.pos += 1;
            match self.peek() {
                Some(Token { tok: Tok::Num(n), .. }) if *n >= 0.0 && n.fract() == 0.0 => {
                    limit = Some(*n as usize);
                    self.pos += 1;
                }
                _ => return Err(self.unexpected()),
            }
        }
        if self.peek().is_some() {
            return Err(self.unexpected());
        }
        Ok(Query { fields, object, object_column, filter, order, limit })
    }

    /// `a AND b AND c`, or `a OR b OR c`: mixing needs parentheses.
    fn condition(&mut self) -> Result<Cond, QueryError> {
        let first = self.factor()?;
        let mut joiner: Option<&'static str> = None;
        let mut parts = vec![first];
        loop {
            let kw = if self.keyword("AND") {
                "AND"
            } else if self.keyword("OR") {
                "OR"
            } else {
                break;
            };
            if joiner.is_some_and(|j| j != kw) {
                return Err(self.unexpected());
            }
            joiner = Some(kw);
            self.pos += 1;
            parts.push(self.factor()?);
        }
        Ok(match joiner {
            None => parts.remove(0),
            Some("AND") => Cond::And(parts),
            Some(_) => Cond::Or(parts),
        })
    }

    fn factor(&mut self) -> Result<Cond, QueryError> {
        if self.keyword("NOT") {
            self.pos += 1;
            return Ok(Cond::Not(Box::new(self.factor()?)));
        }
        if self.sym("(") {
            self.pos += 1;
            let inner = self.condition()?;
            if !self.sym(")") {
                return Err(self.unexpected());
            }
            self.pos += 1;
            return Ok(inner);
        }
        let (field, column) = self.name()?;
        if self.keyword("NOT") {
            self.pos += 1;
            if !self.keyword("IN") {
                return Err(self.unexpected());
            }
            self.pos += 1;
            return Ok(Cond::In { field, values: self.list()?, negated: true, column });
        }
        if self.keyword("IN") {
            self.pos += 1;
            return Ok(Cond::In { field, values: self.list()?, negated: false, column });
        }
        let op = match self.peek() {
            Some(Token { tok: Tok::Sym(s), .. }) => match *s {
                "=" => Op::Eq,
                "!=" | "<>" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                _ => return Err(self.unexpected()),
            },
            Some(Token { tok: Tok::Word(w), .. }) if w.eq_ignore_ascii_case("LIKE") => Op::Like,
            _ => return Err(self.unexpected()),
        };
        self.pos += 1;
        let value = self.literal()?;
        Ok(Cond::Compare { field, op, value, column })
    }

    fn list(&mut self) -> Result<Vec<Literal>, QueryError> {
        if !self.sym("(") {
            return Err(self.unexpected());
        }
        self.pos += 1;
        let mut values = vec![self.literal()?];
        while self.sym(",") {
            self.pos += 1;
            values.push(self.literal()?);
        }
        if !self.sym(")") {
            return Err(self.unexpected());
        }
        self.pos += 1;
        Ok(values)
    }

    fn literal(&mut self) -> Result<Literal, QueryError> {
        let Some(t) = self.peek() else { return Err(self.unexpected()) };
        let lit = match &t.tok {
            Tok::Str(s) => Literal::Str(s.clone()),
            Tok::Num(n) => Literal::Num(*n),
            Tok::Date(d) => Literal::Date(*d),
            Tok::DateTime(ms) => Literal::DateTime(*ms),
            Tok::Word(w) => match w.to_ascii_uppercase().as_str() {
                "TRUE" => Literal::Bool(true),
                "FALSE" => Literal::Bool(false),
                "NULL" => Literal::Null,
                "TODAY" => Literal::RelativeDay(0),
                "YESTERDAY" => Literal::RelativeDay(-1),
                "TOMORROW" => Literal::RelativeDay(1),
                _ => return Err(self.unexpected()),
            },
            Tok::Sym(_) => return Err(self.unexpected()),
        };
        self.pos += 1;
        Ok(lit)
    }
}

fn is_reserved(w: &str) -> bool {
    const RESERVED: &[&str] = &[
        "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "LIMIT", "ASC", "DESC", "NULLS",
        "NULL", "TRUE", "FALSE",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(w))
}

/// Parses `q`.
pub fn parse(q: &str) -> Result<Query, QueryError> {
    let toks = tokenize(q)?;
    Parser { q, toks, pos: 0 }.query()
}

/// `LIKE` matching: `%` any run, `_` one character, case-insensitive.
pub fn like(value: &str, pattern: &str) -> bool {
    let v: Vec<char> = value.to_lowercase().chars().collect();
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    fn go(v: &[char], p: &[char]) -> bool {
        match p.first() {
            None => v.is_empty(),
            Some('%') => (0..=v.len()).any(|i| go(&v[i..], &p[1..])),
            Some('_') => !v.is_empty() && go(&v[1..], &p[1..]),
            Some(c) => v.first() == Some(c) && go(&v[1..], &p[1..]),
        }
    }
    go(&v, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polling_query_parses() {
        let q = parse(
            "SELECT Id, Fecha__c, Contacto__r.MobilePhone FROM Cita__c WHERE SystemModstamp >= 2026-11-22T10:00:00Z AND (Estado__c != 'Cancelada' OR Estado__c = null) ORDER BY SystemModstamp, Id LIMIT 10",
        )
        .unwrap();
        assert_eq!(q.fields.len(), 3);
        assert_eq!(q.fields[2].0, "Contacto__r.MobilePhone");
        assert_eq!(q.object, "Cita__c");
        assert_eq!(q.order.len(), 2);
        assert_eq!(q.limit, Some(10));
        let Some(Cond::And(parts)) = q.filter else { panic!("and") };
        assert!(matches!(&parts[0], Cond::Compare { value: Literal::DateTime(_), op: Op::Ge, .. }));
        assert!(matches!(&parts[1], Cond::Or(_)));
    }

    #[test]
    fn mixing_and_and_or_without_parentheses_is_malformed() {
        let e = parse("SELECT Id FROM Contact WHERE A = 1 AND B = 2 OR C = 3").unwrap_err();
        assert_eq!(e.code, "MALFORMED_QUERY");
        assert!(e.message.contains("unexpected token: OR"), "{}", e.message);
        assert!(e.message.contains("ERROR at Row:1:Column:46"), "{}", e.message);
    }

    #[test]
    fn bad_queries_are_refused_in_salesforces_words() {
        assert_eq!(parse("").unwrap_err().message, "SOQL statements cannot be empty or null");
        assert!(parse("SELECT Id FRM Contact").unwrap_err().message.contains("unexpected token: FRM"));
        assert!(parse("SELECT Id FROM Contact WHERE").unwrap_err().message.contains("<EOF>"));
        let dt = parse("SELECT Id FROM Contact WHERE SystemModstamp > 2026-11-22T10:00:00-03:00").unwrap();
        let Some(Cond::Compare { value: Literal::DateTime(ms), .. }) = dt.filter else { panic!() };
        assert_eq!(ms, 1_795_352_400_000);
    }

    #[test]
    fn like_patterns() {
        assert!(like("Ana María", "ana%"));
        assert!(like("abc", "a_c"));
        assert!(!like("abcd", "a_c"));
    }
}
