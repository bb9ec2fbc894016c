%%% A small JSON encoder/decoder (RFC 8259). OTP 25 has no json module.
%%%
%%% Decoding: objects -> maps with binary keys, arrays -> lists, strings -> UTF-8 binaries,
%%% numbers -> integers or floats, true/false/null -> atoms. Trailing garbage is an error.
%%% Encoding: maps (binary/atom/integer keys), lists, binaries, integers, floats, true, false,
%%% null, other atoms as strings.
-module(tai_json).

-export([decode/1, encode/1]).

-define(MAX_DEPTH, 64).

%%====================================================================
%% Decoding
%%====================================================================

-spec decode(binary()) -> {ok, term()} | {error, binary()}.
decode(Bin) when is_binary(Bin) ->
    try
        is_binary(unicode:characters_to_binary(Bin)) orelse throw({json, <<"invalid UTF-8">>}),
        {Value, Rest} = value(ws(Bin), 0),
        case ws(Rest) of
            <<>> -> {ok, Value};
            _ -> {error, <<"trailing data after JSON value">>}
        end
    catch
        throw:{json, Why} -> {error, Why};
        error:_ -> {error, <<"malformed JSON">>}
    end.

ws(<<C, Rest/binary>>) when C =:= $\s; C =:= $\t; C =:= $\n; C =:= $\r -> ws(Rest);
ws(Bin) -> Bin.

value(_, Depth) when Depth > ?MAX_DEPTH -> throw({json, <<"JSON nested too deeply">>});
value(<<${, Rest/binary>>, D) -> object(ws(Rest), #{}, D + 1);
value(<<$[, Rest/binary>>, D) -> array(ws(Rest), [], D + 1);
value(<<$", Rest/binary>>, _) -> string(Rest, []);
value(<<"true", Rest/binary>>, _) -> {true, Rest};
value(<<"false", Rest/binary>>, _) -> {false, Rest};
value(<<"null", Rest/binary>>, _) -> {null, Rest};
value(<<C, _/binary>> = Bin, _) when C =:= $-; C >= $0, C =< $9 -> number(Bin);
value(<<>>, _) -> throw({json, <<"unexpected end of JSON input">>});
value(_, _) -> throw({json, <<"malformed JSON">>}).

object(<<$}, Rest/binary>>, Acc, _) when map_size(Acc) =:= 0 -> {Acc, Rest};
object(<<$", Rest/binary>>, Acc, D) ->
    {Key, R1} = string(Rest, []),
    case ws(R1) of
        <<$:, R2/binary>> ->
            {Val, R3} = value(ws(R2), D),
            Acc1 = Acc#{Key => Val},
            case ws(R3) of
                <<$,, R4/binary>> -> object_key(ws(R4), Acc1, D);
                <<$}, R4/binary>> -> {Acc1, R4};
                _ -> throw({json, <<"malformed JSON object">>})
            end;
        _ ->
            throw({json, <<"malformed JSON object">>})
    end;
object(_, _, _) ->
    throw({json, <<"malformed JSON object">>}).

object_key(<<$", _/binary>> = Bin, Acc, D) -> object(Bin, Acc, D);
object_key(_, _, _) -> throw({json, <<"malformed JSON object">>}).

array(<<$], Rest/binary>>, [], _) -> {[], Rest};
array(Bin, Acc, D) ->
    {Val, R1} = value(Bin, D),
    case ws(R1) of
        <<$,, R2/binary>> -> array(ws(R2), [Val | Acc], D);
        <<$], R2/binary>> -> {lists:reverse([Val | Acc]), R2};
        _ -> throw({json, <<"malformed JSON array">>})
    end.

string(Bin, Acc) ->
    case string_run(Bin, 0) of
        {Len, $"} ->
            <<Run:Len/binary, $", Rest/binary>> = Bin,
            {iolist_to_binary(lists:reverse([Run | Acc])), Rest};
        {Len, $\\} ->
            <<Run:Len/binary, $\\, Esc/binary>> = Bin,
            {Chars, Rest} = escape(Esc),
            string(Rest, [Chars, Run | Acc])
    end.

%% Length of the run of plain characters before the next quote or backslash.
string_run(Bin, N) ->
    case Bin of
        <<_:N/binary, $", _/binary>> -> {N, $"};
        <<_:N/binary, $\\, _/binary>> -> {N, $\\};
        <<_:N/binary, C, _/binary>> when C < 16#20 ->
            throw({json, <<"control character in JSON string">>});
        <<_:N/binary, _, _/binary>> -> string_run(Bin, N + 1);
        _ -> throw({json, <<"unterminated JSON string">>})
    end.

escape(<<$", R/binary>>) -> {<<$">>, R};
escape(<<$\\, R/binary>>) -> {<<$\\>>, R};
escape(<<$/, R/binary>>) -> {<<$/>>, R};
escape(<<$b, R/binary>>) -> {<<$\b>>, R};
escape(<<$f, R/binary>>) -> {<<$\f>>, R};
escape(<<$n, R/binary>>) -> {<<$\n>>, R};
escape(<<$r, R/binary>>) -> {<<$\r>>, R};
escape(<<$t, R/binary>>) -> {<<$\t>>, R};
escape(<<$u, H:4/binary, R/binary>>) ->
    case hex4(H) of
        Hi when Hi >= 16#D800, Hi =< 16#DBFF ->
            case R of
                <<$\\, $u, L:4/binary, R2/binary>> ->
                    case hex4(L) of
                        Lo when Lo >= 16#DC00, Lo =< 16#DFFF ->
                            Cp = 16#10000 + ((Hi - 16#D800) bsl 10) + (Lo - 16#DC00),
                            {<<Cp/utf8>>, R2};
                        _ ->
                            throw({json, <<"invalid surrogate pair in JSON string">>})
                    end;
                _ ->
                    throw({json, <<"invalid surrogate pair in JSON string">>})
            end;
        Lo when Lo >= 16#DC00, Lo =< 16#DFFF ->
            throw({json, <<"invalid surrogate pair in JSON string">>});
        Cp ->
            {<<Cp/utf8>>, R}
    end;
escape(_) ->
    throw({json, <<"invalid escape in JSON string">>}).

hex4(H) ->
    try binary_to_integer(H, 16) of
        N -> N
    catch
        error:badarg -> throw({json, <<"invalid \\u escape in JSON string">>})
    end.

number(Bin) ->
    {Int, R1} = int_part(Bin),
    {Frac, R2} = frac_part(R1),
    {Exp, R3} = exp_part(R2),
    Text = <<Int/binary, Frac/binary, Exp/binary>>,
    case {Frac, Exp} of
        {<<>>, <<>>} ->
            {binary_to_integer(Text), R3};
        {<<>>, _} ->
            %% 1e5 is not accepted by binary_to_float/1: add a fraction.
            {binary_to_float(<<Int/binary, ".0", Exp/binary>>), R3};
        _ ->
            {binary_to_float(Text), R3}
    end.

int_part(<<$-, R/binary>>) ->
    {Digits, R1} = int_digits(R),
    {<<$-, Digits/binary>>, R1};
int_part(Bin) ->
    int_digits(Bin).

int_digits(<<$0, C, _/binary>>) when C >= $0, C =< $9 ->
    throw({json, <<"leading zero in JSON number">>});
int_digits(Bin) ->
    case digits(Bin, 0) of
        0 -> throw({json, <<"malformed JSON number">>});
        N -> split(Bin, N)
    end.

frac_part(<<$., R/binary>>) ->
    case digits(R, 0) of
        0 -> throw({json, <<"malformed JSON number">>});
        N ->
            <<D:N/binary, R1/binary>> = R,
            {<<$., D/binary>>, R1}
    end;
frac_part(Bin) ->
    {<<>>, Bin}.

exp_part(<<E, R/binary>>) when E =:= $e; E =:= $E ->
    {Sign, R1} =
        case R of
            <<$+, X/binary>> -> {<<"+">>, X};
            <<$-, X/binary>> -> {<<"-">>, X};
            X -> {<<>>, X}
        end,
    case digits(R1, 0) of
        0 -> throw({json, <<"malformed JSON number">>});
        N ->
            <<D:N/binary, R2/binary>> = R1,
            {<<$e, Sign/binary, D/binary>>, R2}
    end;
exp_part(Bin) ->
    {<<>>, Bin}.

digits(Bin, N) ->
    case Bin of
        <<_:N/binary, C, _/binary>> when C >= $0, C =< $9 -> digits(Bin, N + 1);
        _ -> N
    end.

split(Bin, N) ->
    <<A:N/binary, B/binary>> = Bin,
    {A, B}.

%%====================================================================
%% Encoding
%%====================================================================

-spec encode(term()) -> iodata().
encode(true) -> <<"true">>;
encode(false) -> <<"false">>;
encode(null) -> <<"null">>;
encode(undefined) -> <<"null">>;
encode(A) when is_atom(A) -> encode_string(atom_to_binary(A, utf8));
encode(B) when is_binary(B) -> encode_string(B);
encode(I) when is_integer(I) -> integer_to_binary(I);
encode(F) when is_float(F) -> float_to_binary(F, [{decimals, 3}, compact]);
encode(M) when is_map(M) -> encode_object(maps:to_list(M));
encode({object, Pairs}) when is_list(Pairs) -> encode_object(Pairs);
encode(L) when is_list(L) -> [$[, join([encode(V) || V <- L]), $]].

%% {object, [{K, V}]} keeps the key order (receipts read better with "kind" first).
encode_object(Pairs) ->
    [${, join([[encode_key(K), $:, encode(V)] || {K, V} <- Pairs]), $}].

encode_key(K) when is_binary(K) -> encode_string(K);
encode_key(K) when is_atom(K) -> encode_string(atom_to_binary(K, utf8));
encode_key(K) when is_integer(K) -> encode_string(integer_to_binary(K)).

join([]) -> [];
join([H | T]) -> [H | [[$, | X] || X <- T]].

encode_string(B) ->
    case needs_escape(B) of
        false -> [$", B, $"];
        true -> [$", escape_string(B, <<>>), $"]
    end.

needs_escape(<<>>) -> false;
needs_escape(<<C, _/binary>>) when C < 16#20; C =:= $"; C =:= $\\ -> true;
needs_escape(<<_, R/binary>>) -> needs_escape(R).

escape_string(<<>>, Acc) -> Acc;
escape_string(<<$", R/binary>>, Acc) -> escape_string(R, <<Acc/binary, "\\\"">>);
escape_string(<<$\\, R/binary>>, Acc) -> escape_string(R, <<Acc/binary, "\\\\">>);
escape_string(<<$\n, R/binary>>, Acc) -> escape_string(R, <<Acc/binary, "\\n">>);
escape_string(<<$\r, R/binary>>, Acc) -> escape_string(R, <<Acc/binary, "\\r">>);
escape_string(<<$\t, R/binary>>, Acc) -> escape_string(R, <<Acc/binary, "\\t">>);
escape_string(<<C, R/binary>>, Acc) when C < 16#20 ->
    Hex = list_to_binary(io_lib:format("\\u~4.16.0b", [C])),
    escape_string(R, <<Acc/binary, Hex/binary>>);
escape_string(<<C, R/binary>>, Acc) ->
    escape_string(R, <<Acc/binary, C>>).
