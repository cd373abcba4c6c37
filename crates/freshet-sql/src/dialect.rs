//! Freshet's SQL dialect: DataFusion's generic dialect plus table versioning clauses
//! (`FOR SYSTEM_TIME AS OF ...`, `VERSION AS OF n`, `TIMESTAMP AS OF ...`) for time travel.

use std::any::TypeId;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident, ObjectName,
};
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

/// The generic dialect with time travel. It reports itself as the generic dialect, so that the
/// parser's dialect-specific choices are exactly DataFusion's.
#[derive(Debug, Default)]
pub struct FreshetDialect {
    generic: GenericDialect,
}

impl Dialect for FreshetDialect {
    fn dialect(&self) -> TypeId {
        TypeId::of::<GenericDialect>()
    }

    /// `TABLE t` as an argument of Flink's window functions (`TUMBLE(TABLE t, ...)`), which
    /// the parser does not take: parsed into a marker call that the window rewrite replaces.
    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        let is_table_argument = matches!(&parser.peek_token_ref().token, Token::Word(w) if w.keyword == Keyword::TABLE)
            && matches!(&parser.peek_nth_token_ref(1).token, Token::Word(_));
        if !is_table_argument {
            return None;
        }
        parser.next_token();
        let parsed = parser.parse_object_name(false).and_then(|name| {
            // `TABLE t PARTITION BY k` or `PARTITION BY (k1, k2)` (SESSION windows, as Flink
            // writes them): the keys follow the table.
            let keys = if !parser.parse_keywords(&[Keyword::PARTITION, Keyword::BY]) {
                Vec::new()
            } else if parser.consume_token(&Token::LParen) {
                let keys = parser.parse_comma_separated(|p| p.parse_object_name(false))?;
                parser.expect_token(&Token::RParen)?;
                keys
            } else {
                vec![parser.parse_object_name(false)?]
            };
            Ok((name, keys))
        });
        Some(parsed.map(|(name, keys)| {
            let parts: Vec<Ident> = name.0.iter().filter_map(|p| p.as_ident().cloned()).collect();
            let mut args = vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(
                parts,
            )))];
            // A key is a column, or a field of a ROW column (`bid.bidder`).
            args.extend(keys.into_iter().map(|key| {
                let mut parts: Vec<Ident> = key.0.iter().filter_map(|p| p.as_ident().cloned()).collect();
                let key = match parts.len() {
                    1 => Expr::Identifier(parts.remove(0)),
                    _ => Expr::CompoundIdentifier(parts),
                };
                FunctionArg::Unnamed(FunctionArgExpr::Expr(key))
            }));
            Expr::Function(Function {
                name: ObjectName::from(vec![Ident::new(crate::window_tvf::TABLE_ARGUMENT)]),
                uses_odbc_syntax: false,
                parameters: FunctionArguments::None,
                args: FunctionArguments::List(FunctionArgumentList {
                    duplicate_treatment: None,
                    args,
                    clauses: Vec::new(),
                }),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: Vec::new(),
            })
        }))
    }

    fn supports_table_versioning(&self) -> bool {
        true
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.generic.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        self.generic.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        self.generic.is_identifier_part(ch)
    }

    fn supports_unicode_string_literal(&self) -> bool {
        self.generic.supports_unicode_string_literal()
    }

    fn supports_partition_by_after_order_by(&self) -> bool {
        self.generic.supports_partition_by_after_order_by()
    }

    fn supports_array_join_syntax(&self) -> bool {
        self.generic.supports_array_join_syntax()
    }

    fn supports_group_by_expr(&self) -> bool {
        self.generic.supports_group_by_expr()
    }

    fn supports_group_by_with_modifier(&self) -> bool {
        self.generic.supports_group_by_with_modifier()
    }

    fn supports_left_associative_joins_without_parens(&self) -> bool {
        self.generic.supports_left_associative_joins_without_parens()
    }

    fn supports_connect_by(&self) -> bool {
        self.generic.supports_connect_by()
    }

    fn supports_match_recognize(&self) -> bool {
        self.generic.supports_match_recognize()
    }

    fn supports_pipe_operator(&self) -> bool {
        self.generic.supports_pipe_operator()
    }

    fn supports_start_transaction_modifier(&self) -> bool {
        self.generic.supports_start_transaction_modifier()
    }

    fn supports_window_function_null_treatment_arg(&self) -> bool {
        self.generic.supports_window_function_null_treatment_arg()
    }

    fn supports_dictionary_syntax(&self) -> bool {
        self.generic.supports_dictionary_syntax()
    }

    fn supports_window_clause_named_window_reference(&self) -> bool {
        self.generic.supports_window_clause_named_window_reference()
    }

    fn supports_parenthesized_set_variables(&self) -> bool {
        self.generic.supports_parenthesized_set_variables()
    }

    fn supports_select_wildcard_except(&self) -> bool {
        self.generic.supports_select_wildcard_except()
    }

    fn support_map_literal_syntax(&self) -> bool {
        self.generic.support_map_literal_syntax()
    }

    fn allow_extract_custom(&self) -> bool {
        self.generic.allow_extract_custom()
    }

    fn allow_extract_single_quotes(&self) -> bool {
        self.generic.allow_extract_single_quotes()
    }

    fn supports_extract_comma_syntax(&self) -> bool {
        self.generic.supports_extract_comma_syntax()
    }

    fn supports_create_view_comment_syntax(&self) -> bool {
        self.generic.supports_create_view_comment_syntax()
    }

    fn supports_parens_around_table_factor(&self) -> bool {
        self.generic.supports_parens_around_table_factor()
    }

    fn supports_values_as_table_factor(&self) -> bool {
        self.generic.supports_values_as_table_factor()
    }

    fn supports_create_index_with_clause(&self) -> bool {
        self.generic.supports_create_index_with_clause()
    }

    fn supports_explain_with_utility_options(&self) -> bool {
        self.generic.supports_explain_with_utility_options()
    }

    fn supports_limit_comma(&self) -> bool {
        self.generic.supports_limit_comma()
    }

    fn supports_update_order_by(&self) -> bool {
        self.generic.supports_update_order_by()
    }

    fn supports_from_first_select(&self) -> bool {
        self.generic.supports_from_first_select()
    }

    fn supports_projection_trailing_commas(&self) -> bool {
        self.generic.supports_projection_trailing_commas()
    }

    fn supports_asc_desc_in_column_definition(&self) -> bool {
        self.generic.supports_asc_desc_in_column_definition()
    }

    fn supports_try_convert(&self) -> bool {
        self.generic.supports_try_convert()
    }

    fn supports_bitwise_shift_operators(&self) -> bool {
        self.generic.supports_bitwise_shift_operators()
    }

    fn supports_comment_on(&self) -> bool {
        self.generic.supports_comment_on()
    }

    fn supports_load_extension(&self) -> bool {
        self.generic.supports_load_extension()
    }

    fn supports_named_fn_args_with_assignment_operator(&self) -> bool {
        self.generic.supports_named_fn_args_with_assignment_operator()
    }

    fn supports_struct_literal(&self) -> bool {
        self.generic.supports_struct_literal()
    }

    fn supports_empty_projections(&self) -> bool {
        self.generic.supports_empty_projections()
    }

    fn supports_nested_comments(&self) -> bool {
        self.generic.supports_nested_comments()
    }

    fn supports_multiline_comment_hints(&self) -> bool {
        self.generic.supports_multiline_comment_hints()
    }

    fn supports_user_host_grantee(&self) -> bool {
        self.generic.supports_user_host_grantee()
    }

    fn supports_string_escape_constant(&self) -> bool {
        self.generic.supports_string_escape_constant()
    }

    fn supports_array_typedef_with_brackets(&self) -> bool {
        self.generic.supports_array_typedef_with_brackets()
    }

    fn supports_match_against(&self) -> bool {
        self.generic.supports_match_against()
    }

    fn supports_set_names(&self) -> bool {
        self.generic.supports_set_names()
    }

    fn supports_comma_separated_set_assignments(&self) -> bool {
        self.generic.supports_comma_separated_set_assignments()
    }

    fn supports_filter_during_aggregation(&self) -> bool {
        self.generic.supports_filter_during_aggregation()
    }

    fn supports_select_wildcard_exclude(&self) -> bool {
        self.generic.supports_select_wildcard_exclude()
    }

    fn supports_data_type_signed_suffix(&self) -> bool {
        self.generic.supports_data_type_signed_suffix()
    }

    fn supports_interval_options(&self) -> bool {
        self.generic.supports_interval_options()
    }

    fn supports_quote_delimited_string(&self) -> bool {
        self.generic.supports_quote_delimited_string()
    }

    fn supports_select_wildcard_replace(&self) -> bool {
        self.generic.supports_select_wildcard_replace()
    }

    fn supports_select_wildcard_ilike(&self) -> bool {
        self.generic.supports_select_wildcard_ilike()
    }

    fn supports_select_wildcard_rename(&self) -> bool {
        self.generic.supports_select_wildcard_rename()
    }

    fn supports_optimize_table(&self) -> bool {
        self.generic.supports_optimize_table()
    }

    fn supports_install(&self) -> bool {
        self.generic.supports_install()
    }

    fn supports_detach(&self) -> bool {
        self.generic.supports_detach()
    }

    fn supports_prewhere(&self) -> bool {
        self.generic.supports_prewhere()
    }

    fn supports_with_fill(&self) -> bool {
        self.generic.supports_with_fill()
    }

    fn supports_limit_by(&self) -> bool {
        self.generic.supports_limit_by()
    }

    fn supports_interpolate(&self) -> bool {
        self.generic.supports_interpolate()
    }

    fn supports_settings(&self) -> bool {
        self.generic.supports_settings()
    }

    fn supports_select_format(&self) -> bool {
        self.generic.supports_select_format()
    }

    fn supports_comment_optimizer_hint(&self) -> bool {
        self.generic.supports_comment_optimizer_hint()
    }

    fn supports_constraint_keyword_without_name(&self) -> bool {
        self.generic.supports_constraint_keyword_without_name()
    }

    fn supports_key_column_option(&self) -> bool {
        self.generic.supports_key_column_option()
    }

    fn supports_comma_separated_trim(&self) -> bool {
        self.generic.supports_comma_separated_trim()
    }

    fn supports_cte_without_as(&self) -> bool {
        self.generic.supports_cte_without_as()
    }

    fn supports_select_item_multi_column_alias(&self) -> bool {
        self.generic.supports_select_item_multi_column_alias()
    }

    fn supports_xml_expressions(&self) -> bool {
        self.generic.supports_xml_expressions()
    }
}
