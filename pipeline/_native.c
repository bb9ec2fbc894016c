/* The two hot paths of judging a million receipts, in C. Each has a Python twin that is used
 * when this module is not built, and the tests run both:
 *   line_digest  the hash a chained line claims, checked against the hash of its body
 *                (ARCHITECTURE.md "Receipts"; twin: receipts.py_line_digest);
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

static const char HEX[] = "0123456789abcdef";

/* line_digest(line) -> "sha256:<hex>" of the body (line without its hash field, closed by `}`)
 * when the line ends with a hash field that matches it; False when it ends with one that does
 * not (edited); None when it has none (not a chained receipt). `line` has no newline. */
static PyObject *line_digest(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "line_digest() takes bytes");
        return NULL;
    }
    const unsigned char *line = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    if (size < SUFFIX_LEN + 1 || memcmp(line + size - SUFFIX_LEN, PREFIX, PREFIX_LEN) != 0 ||
        line[size - 2] != '"' || line[size - 1] != '}')
        Py_RETURN_NONE;
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
    const unsigned char *claimed = line + size - SUFFIX_LEN + PREFIX_LEN;
    PyObject *out = PyUnicode_New(7 + 64, 127);
    if (out == NULL)
        return NULL;
    Py_UCS1 *text = PyUnicode_1BYTE_DATA(out);
    memcpy(text, "sha256:", 7);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        text[7 + 2 * i] = (Py_UCS1)HEX[digest[i] >> 4];
        text[8 + 2 * i] = (Py_UCS1)HEX[digest[i] & 15];
    }
    if (memcmp(text + 7, claimed, 64) != 0) {
        Py_DECREF(out);
        Py_RETURN_FALSE;
    }
    return out;
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
    {"select", select_kth, METH_VARARGS,
     "select(buffer, k) -> the k-th smallest double of the buffer, reordering it in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
