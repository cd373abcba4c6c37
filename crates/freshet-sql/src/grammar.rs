//! Small pieces of grammar shared by Freshet's own statements: words, identifiers, quoted
//! strings, `WITH ('key' = 'value', ...)` lists, and errors that say what was expected where.

use datafusion::sql::sqlparser::ast::{Ident, ObjectName, Query};
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use freshet_common::{FreshetError, Result};

/// The rest of the statement as a query, and its text.
pub(crate) fn query(parser: &mut Parser<'_>, sql: &str) -> Result<(Box<Query>, String)> {
    let start = parser.peek_token_ref().span.start;
    let mut query = parser.parse_query().map_err(crate::statement::parse_error)?;
    crate::window_tvf::rewrite_query(&mut query)?;
    let end = parser.get_current_token().span.end;
    let text = crate::statement::slice(sql, start, end).trim().to_string();
    Ok((query, text))
}

pub(crate) fn option_list(parser: &mut Parser<'_>) -> Result<Vec<(String, String)>> {
    expect_token(parser, &Token::LParen, "( after WITH")?;
    let mut options = Vec::new();
    if parser.consume_token(&Token::RParen) {
        return Ok(options);
    }
    loop {
        let key = string_literal(parser, "an option name as a quoted string, such as 'format'")?;
        expect_token(parser, &Token::Eq, "=")?;
        let value = string_literal(parser, "the option's value as a quoted string")?;
        options.push((key, value));
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    expect_token(parser, &Token::RParen, ")")?;
    Ok(options)
}

pub(crate) fn identifier_list(parser: &mut Parser<'_>, what: &str) -> Result<Vec<Ident>> {
    expect_token(parser, &Token::LParen, "(")?;
    let mut out = Vec::new();
    loop {
        out.push(identifier(parser, what)?);
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    expect_token(parser, &Token::RParen, ")")?;
    Ok(out)
}

pub(crate) fn identifier(parser: &mut Parser<'_>, what: &str) -> Result<Ident> {
    match &parser.peek_token_ref().token {
        Token::Word(_) => parser.parse_identifier().map_err(crate::statement::parse_error),
        _ => Err(unexpected(parser, what)),
    }
}

pub(crate) fn object_name(parser: &mut Parser<'_>, what: &str) -> Result<ObjectName> {
    match &parser.peek_token_ref().token {
        Token::Word(_) => parser.parse_object_name(false).map_err(crate::statement::parse_error),
        _ => Err(unexpected(parser, what)),
    }
}

pub(crate) fn string_literal(parser: &mut Parser<'_>, what: &str) -> Result<String> {
    match &parser.peek_token_ref().token {
        Token::SingleQuotedString(s) => {
            let s = s.clone();
            parser.next_token();
            Ok(s)
        }
        _ => Err(unexpected(parser, what)),
    }
}

/// The upper-cased word `n` tokens ahead, or an empty string.
pub(crate) fn word(parser: &Parser<'_>, n: usize) -> String {
    match &parser.peek_nth_token_ref(n).token {
        Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => String::new(),
    }
}

/// Consumes `words` if the next tokens are exactly them.
pub(crate) fn accept_words(parser: &mut Parser<'_>, words: &[&str]) -> bool {
    if words.iter().enumerate().all(|(n, w)| word(parser, n) == *w) {
        for _ in words {
            parser.next_token();
        }
        true
    } else {
        false
    }
}

pub(crate) fn expect_words(parser: &mut Parser<'_>, words: &[&str]) -> Result<()> {
    for w in words {
        if !accept_words(parser, &[w]) {
            return Err(unexpected(parser, w));
        }
    }
    Ok(())
}

pub(crate) fn expect_token(parser: &mut Parser<'_>, token: &Token, what: &str) -> Result<()> {
    if parser.consume_token(token) {
        Ok(())
    } else {
        Err(unexpected(parser, what))
    }
}

pub(crate) fn unexpected(parser: &Parser<'_>, expected: &str) -> FreshetError {
    let next = parser.peek_token_ref();
    let found = match next.token {
        Token::EOF => "end of input".to_string(),
        ref t => t.to_string(),
    };
    at(next, format!("expected {expected}, found {found}"))
}

pub(crate) fn at(token: &TokenWithSpan, message: String) -> FreshetError {
    FreshetError::InvalidStatement(format!("SQL error: {message}{}", position(token.span.start)))
}

pub(crate) fn position(location: Location) -> String {
    if location.line == 0 {
        String::new()
    } else {
        format!(" at line {}, column {}", location.line, location.column)
    }
}
