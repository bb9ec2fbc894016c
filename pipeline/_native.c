/* The hot paths of judging a million receipts, in C. Each has a Python twin that is used when
 * this module is not built (or when it is unsure), and the tests hold them to the same answers:
 *   line_digest  the hash a chained line claims, checked against the hash of its body
 *                (ARCHITECTURE.md "Receipts"; twin: receipts.py_line_digest);
 *   link         one call that accepts a line which is surely good: hash, canonical form, seq
 *                and prev; anything it is not sure of goes to the reference checks in
 *                receipts._scan_range, which name what is wrong;
 *   select       the k-th smallest of a buffer of doubles, for percentiles without sorting a
 *                million samples (twin: sorted() in gates.py). */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256(): one call, no EVP context per line */
#include <Python.h>
#include <openssl/sha.h>
#include <string.h>

#define PREFIX ",\"hash\":\"sha256:"
#define PREFIX_LEN 16
#define SUFFIX_LEN (PREFIX_LEN + 64 + 2) /* ,"hash":"sha256:<64 hex>"} */
#define BODY_MAX 65536                  /* longer bodies are hashed in two updates */
#define MAX_DEPTH 32

static const char HEX[] = "0123456789abcdef";

static int has_suffix(const unsigned char *line, Py_ssize_t size) {
    return size > SUFFIX_LEN && memcmp(line + size - SUFFIX_LEN, PREFIX, PREFIX_LEN) == 0 &&
           line[size - 2] == '"' && line[size - 1] == '}';
}

/* "sha256:<hex>" of the body (the line without its hash field, closed by `}`) into text[71]; 1
 * when it is the hash the line claims. */
static int body_digest(const unsigned char *line, Py_ssize_t size, Py_UCS1 *text) {
    Py_ssize_t body = size - SUFFIX_LEN;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    if (body < BODY_MAX) {
        unsigned char buf[BODY_MAX + 1];
        memcpy(buf, line, (size_t)body);
        buf[body] = '}';
        SHA256(buf, (size_t)body + 1, digest);
    } else {
        SHA256_CTX ctx;
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, line, (size_t)body);
        SHA256_Update(&ctx, "}", 1);
        SHA256_Final(digest, &ctx);
    }
    memcpy(text, "sha256:", 7);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        text[7 + 2 * i] = (Py_UCS1)HEX[digest[i] >> 4];
        text[8 + 2 * i] = (Py_UCS1)HEX[digest[i] & 15];
    }
    return memcmp(text + 7, line + size - SUFFIX_LEN + PREFIX_LEN, 64) == 0;
}

/* line_digest(line) -> "sha256:<hex>" when the line ends with a hash field that matches its
 * body; False when it ends with one that does not (edited); None when it has none (not a
 * chained receipt). `line` has no newline. */
static PyObject *line_digest(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "line_digest() takes bytes");
        return NULL;
    }
    const unsigned char *line = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    if (!has_suffix(line, size))
        Py_RETURN_NONE;
    PyObject *out = PyUnicode_New(7 + 64, 127);
    if (out == NULL)
        return NULL;
    if (!body_digest(line, size, PyUnicode_1BYTE_DATA(out))) {
        Py_DECREF(out);
        Py_RETURN_FALSE;
    }
    return out;
}

/* ---- the canonical form, as orjson writes it with OPT_SORT_KEYS, in the cases this reader
 * can be sure of: keys strictly ascending (so none twice), no whitespace, ASCII strings without
 * escapes, integers of at most 18 digits, floats in positional notation with at most 15
 * significant digits and no trailing zero. A decimal of at most 15 significant digits is the
 * shortest one that parses to its double (DBL_DIG), which is the one orjson writes; whether
 * orjson writes a magnitude positionally is checked against the installed orjson when
 * receipts.py loads this module (`small`, `large`: the decimal exponents it writes that way). */

typedef struct {
    const unsigned char *p, *end;
    int depth, small, large;
    const unsigned char *prev; /* what the top level's "prev" must be, and its "seq" */
    Py_ssize_t prev_len;
    int has_prev;
    long long seq;
    int has_seq;
    PyObject *wanted; /* a tuple of ASCII str: the top-level fields to copy into `record` */
    PyObject *record;
    int error; /* a Python exception is set */
} Scan;

static int value(Scan *s);

static unsigned char plain[256]; /* bytes a canonical string holds as they are: set by init */

static int string(Scan *s, const unsigned char **start, Py_ssize_t *len) {
    const unsigned char *q = ++s->p, *end = s->end;
    while (q < end && plain[*q])
        q++;
    if (q >= end || *q != '"')
        return 0; /* an escape, a control or non-ASCII byte: not sure, or not a string */
    *start = s->p;
    *len = q - s->p;
    s->p = q + 1;
    return 1;
}

#define DIGIT(c) ((c) >= '0' && (c) <= '9')

static int number(Scan *s, long long *integer, int *is_integer) {
    const unsigned char *p = s->p, *end = s->end;
    int negative = p < end && *p == '-';
    p += negative;
    const unsigned char *whole = p;
    if (p >= end || !DIGIT(*p))
        return 0;
    if (*p == '0')
        p++;
    else
        while (p < end && DIGIT(*p))
            p++;
    Py_ssize_t whole_digits = p - whole;
    int zero_whole = whole_digits == 1 && *whole == '0';
    if (p < end && (*p == 'e' || *p == 'E'))
        return 0;
    if (p >= end || *p != '.') {
        if ((negative && zero_whole) || whole_digits > 18)
            return 0; /* -0 is written 0; longer integers may not fit orjson's 64 bits */
        long long n = 0;
        for (const unsigned char *d = whole; d < p; d++)
            n = n * 10 + (*d - '0');
        *integer = negative ? -n : n;
        *is_integer = 1;
        s->p = p;
        return 1;
    }
    const unsigned char *fraction = ++p;
    while (p < end && DIGIT(*p))
        p++;
    Py_ssize_t fraction_digits = p - fraction;
    if (fraction_digits == 0 || (p < end && (*p == 'e' || *p == 'E')))
        return 0;
    if (fraction_digits == 1 && *fraction == '0') { /* N.0: an integral float */
        if (!zero_whole && (whole_digits > 15 || whole_digits - 1 > s->large))
            return 0;
    } else {
        if (fraction[fraction_digits - 1] == '0')
            return 0; /* a trailing zero is never written */
        if (zero_whole) {
            Py_ssize_t zeros = 0;
            while (zeros < fraction_digits && fraction[zeros] == '0')
                zeros++;
            if (-(zeros + 1) < s->small || fraction_digits - zeros > 15)
                return 0;
        } else if (whole_digits + fraction_digits > 15 || whole_digits - 1 > s->large) {
            return 0;
        }
    }
    *is_integer = 0;
    s->p = p;
    return 1;
}

static int key_after(const unsigned char *a, Py_ssize_t a_len, const unsigned char *b,
                     Py_ssize_t b_len) {
    int order = memcmp(a, b, (size_t)(a_len < b_len ? a_len : b_len));
    return order < 0 || (order == 0 && a_len < b_len);
}

static int literal(Scan *s, const char *word, Py_ssize_t len) {
    if (s->end - s->p < len || memcmp(s->p, word, (size_t)len) != 0)
        return 0;
    s->p += len;
    return 1;
}

/* Past the `}` or `]` that closes the current object or array. */
static int closed(Scan *s) {
    s->p++;
    s->depth--;
    return 1;
}

/* The wanted field named key, or NULL. */
static PyObject *wanted_name(Scan *s, const unsigned char *key, Py_ssize_t key_len) {
    Py_ssize_t n = PyTuple_GET_SIZE(s->wanted);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(s->wanted, i);
        if (PyUnicode_GET_LENGTH(name) == key_len &&
            memcmp(PyUnicode_1BYTE_DATA(name), key, (size_t)key_len) == 0)
            return name;
    }
    return NULL;
}

/* A scalar value as the Python object orjson.loads would make of it: into record[name]. */
static int copy_value(Scan *s, PyObject *name) {
    const unsigned char *start = s->p, *text;
    Py_ssize_t len;
    long long integer;
    int is_integer = 0;
    PyObject *found;
    switch (*s->p) {
    case '"':
        if (!string(s, &text, &len))
            return 0;
        found = PyUnicode_New(len, 127);
        if (found != NULL)
            memcpy(PyUnicode_1BYTE_DATA(found), text, (size_t)len);
        break;
    case 't':
        if (!literal(s, "true", 4))
            return 0;
        found = Py_NewRef(Py_True);
        break;
    case 'f':
        if (!literal(s, "false", 5))
            return 0;
        found = Py_NewRef(Py_False);
        break;
    case 'n':
        if (!literal(s, "null", 4))
            return 0;
        found = Py_NewRef(Py_None);
        break;
    case '{':
    case '[':
        return 0; /* not copied here: the caller parses the whole line */
    default:
        if (!number(s, &integer, &is_integer))
            return 0;
        if (is_integer) {
            found = PyLong_FromLongLong(integer);
        } else {
            char *stop;
            double x = PyOS_string_to_double((const char *)start, &stop, NULL);
            found = (x == -1.0 && PyErr_Occurred()) ? NULL : PyFloat_FromDouble(x);
        }
    }
    if (found == NULL || PyDict_SetItem(s->record, name, found) < 0) {
        Py_XDECREF(found);
        s->error = 1;
        return 0;
    }
    Py_DECREF(found);
    return 1;
}

/* An object from `{`; at the top level it ends where the hash field begins (s->end). */
static int object(Scan *s, int top) {
    if (++s->depth > MAX_DEPTH)
        return 0;
    s->p++;
    if (s->p < s->end && *s->p == '}' && !top)
        return closed(s);
    const unsigned char *last = NULL;
    Py_ssize_t last_len = 0;
    for (;;) {
        const unsigned char *key;
        Py_ssize_t key_len;
        if (s->p >= s->end || *s->p != '"' || !string(s, &key, &key_len))
            return 0;
        if (last != NULL && !key_after(last, last_len, key, key_len))
            return 0;
        last = key;
        last_len = key_len;
        if (s->p >= s->end || *s->p != ':')
            return 0;
        s->p++;
        if (top && key_len == 4 && memcmp(key, "hash", 4) == 0)
            return 0; /* the hash field comes last, once */
        if (!top) {
            if (!value(s))
                return 0;
        } else if (key_len == 3 && memcmp(key, "seq", 3) == 0) {
            const unsigned char *start = s->p;
            int is_integer = 0;
            if (s->p >= s->end || !number(s, &s->seq, &is_integer) || !is_integer)
                return 0;
            s->has_seq = 1;
            PyObject *name = wanted_name(s, key, key_len);
            if (name != NULL && (s->p = start, !copy_value(s, name)))
                return 0;
        } else if (key_len == 4 && memcmp(key, "prev", 4) == 0) {
            /* compared with the expected prev here: no need to scan it as a string */
            if (s->end - s->p < s->prev_len + 2 || *s->p != '"' ||
                memcmp(s->p + 1, s->prev, (size_t)s->prev_len) != 0 ||
                s->p[s->prev_len + 1] != '"')
                return 0;
            PyObject *name = wanted_name(s, key, key_len);
            if (name != NULL && !copy_value(s, name))
                return 0;
            if (name == NULL)
                s->p += s->prev_len + 2;
            s->has_prev = 1;
        } else {
            if (key_len == 4 && memcmp(key, "kind", 4) == 0 && s->end - s->p >= 6 &&
                memcmp(s->p, "\"seal\"", 6) == 0)
                return 0; /* the seal is judged by the caller */
            PyObject *name = wanted_name(s, key, key_len);
            if (name != NULL ? !copy_value(s, name) : !value(s))
                return 0;
        }
        if (top && s->p == s->end)
            return 1;
        if (s->p >= s->end)
            return 0;
        if (*s->p == '}' && !top)
            return closed(s);
        if (*s->p != ',')
            return 0;
        s->p++;
    }
}

static int array(Scan *s) {
    if (++s->depth > MAX_DEPTH)
        return 0;
    s->p++;
    if (s->p < s->end && *s->p == ']')
        return closed(s);
    for (;;) {
        if (!value(s) || s->p >= s->end)
            return 0;
        if (*s->p == ']')
            return closed(s);
        if (*s->p != ',')
            return 0;
        s->p++;
    }
}


static int value(Scan *s) {
    if (s->p >= s->end)
        return 0;
    const unsigned char *start;
    Py_ssize_t len;
    long long integer;
    int is_integer;
    switch (*s->p) {
    case '"':
        return string(s, &start, &len);
    case '{':
        return object(s, 0);
    case '[':
        return array(s);
    case 't':
        return literal(s, "true", 4);
    case 'f':
        return literal(s, "false", 5);
    case 'n':
        return literal(s, "null", 4);
    default:
        return number(s, &integer, &is_integer);
    }
}

static int positional_small = 0, positional_large = -1; /* set by configure(): none until then */

static PyObject *HASH_KEY; /* "hash", interned */

/* link(line, prev, seq, fields) -> {"hash": "sha256:<hex>", field: value, ...} when the line
 * is surely a good next receipt: its hash field matches its body, it is canonical JSON, its
 * top-level "seq" is `seq`, its "prev" is `prev`, and it is no seal. The dict holds the
 * top-level `fields` the line has (each a str, a number, a bool or None, as orjson.loads makes
 * them). None when anything is not so or not sure, or a wanted field holds an object or an
 * array: the caller then judges the line itself. */
static PyObject *link_line(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyUnicode_Check(args[1]) ||
        !PyLong_Check(args[2]) || !PyTuple_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "link(line: bytes, prev: str, seq: int, fields: tuple[str, ...])");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[3]); i++) {
        PyObject *name = PyTuple_GET_ITEM(args[3], i);
        if (!PyUnicode_Check(name) || !PyUnicode_IS_COMPACT_ASCII(name)) {
            PyErr_SetString(PyExc_TypeError, "link(): fields must be ASCII str");
            return NULL;
        }
    }
    const unsigned char *line = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t prev_len;
    const char *prev = PyUnicode_AsUTF8AndSize(args[1], &prev_len);
    long long seq = PyLong_AsLongLong(args[2]);
    if (prev == NULL || (seq == -1 && PyErr_Occurred()))
        return NULL;
    if (!has_suffix(line, size) || line[0] != '{')
        Py_RETURN_NONE;
    PyObject *record = PyDict_New();
    if (record == NULL)
        return NULL;
    Scan s = {line, line + size - SUFFIX_LEN, 0, positional_small, positional_large,
              (const unsigned char *)prev, prev_len, 0, 0, 0, args[3], record, 0};
    PyObject *digest = NULL;
    if (!object(&s, 1) || !s.has_seq || s.seq != seq || !s.has_prev)
        goto unsure;
    digest = PyUnicode_New(7 + 64, 127);
    if (digest == NULL)
        goto error;
    if (!body_digest(line, size, PyUnicode_1BYTE_DATA(digest)))
        goto unsure;
    if (PyDict_SetItem(record, HASH_KEY, digest) < 0)
        goto error;
    Py_DECREF(digest);
    return record;
unsure:
    if (s.error)
        goto error;
    Py_XDECREF(digest);
    Py_DECREF(record);
    Py_RETURN_NONE;
error:
    Py_XDECREF(digest);
    Py_DECREF(record);
    return NULL;
}

/* configure(small, large): the decimal exponents of the magnitudes the installed orjson writes
 * positionally, e.g. -5 and 15 for 1e-5 <= |x| < 1e16. */
static PyObject *configure(PyObject *self, PyObject *args) {
    (void)self;
    int small, large;
    if (!PyArg_ParseTuple(args, "ii", &small, &large))
        return NULL;
    positional_small = small;
    positional_large = large;
    Py_RETURN_NONE;
}

/* select(buffer, k) -> the k-th smallest (0-based) double of a writable buffer of doubles,
 * which it reorders in place (Hoare's quickselect: smaller values end up before k, larger
 * after). The caller passes a copy it owns; NaN never reaches here (receipts refuse it). */
static PyObject *select_kth(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "w*n", &view, &k))
        return NULL;
    Py_ssize_t n = view.len / (Py_ssize_t)sizeof(double);
    if (view.itemsize != (Py_ssize_t)sizeof(double) || k < 0 || k >= n) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "select() takes a buffer of doubles and 0 <= k < len");
        return NULL;
    }
    double *a = (double *)view.buf;
    Py_ssize_t lo = 0, hi = n - 1;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2; /* median of three as the pivot */
        if (a[mid] < a[lo]) { double t = a[mid]; a[mid] = a[lo]; a[lo] = t; }
        if (a[hi] < a[lo]) { double t = a[hi]; a[hi] = a[lo]; a[lo] = t; }
        if (a[hi] < a[mid]) { double t = a[hi]; a[hi] = a[mid]; a[mid] = t; }
        double pivot = a[mid];
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (pivot < a[j]) j--;
            if (i <= j) {
                double t = a[i]; a[i] = a[j]; a[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break;
    }
    double found = a[k];
    PyBuffer_Release(&view);
    return PyFloat_FromDouble(found);
}

static PyMethodDef methods[] = {
    {"line_digest", line_digest, METH_O,
     "line_digest(line) -> 'sha256:<hex>' when the line's hash field matches its body, "
     "False when it does not, None when the line has no hash field."},
    {"link", (PyCFunction)(void (*)(void))link_line, METH_FASTCALL,
     "link(line, prev, seq, fields) -> {'hash': digest, field: value...} when the line is "
     "surely the good next receipt, else None."},
    {"configure", configure, METH_VARARGS,
     "configure(small, large): decimal exponents orjson writes positionally."},
    {"select", select_kth, METH_VARARGS,
     "select(buffer, k) -> the k-th smallest double of the buffer, reordering it in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_native", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__native(void) {
    for (int c = 0x20; c < 0x80; c++)
        plain[c] = c != '"' && c != '\\';
    HASH_KEY = PyUnicode_InternFromString("hash");
    if (HASH_KEY == NULL)
        return NULL;
    return PyModule_Create(&module);
}
