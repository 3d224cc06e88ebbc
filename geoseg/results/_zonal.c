/* Class areas per zone by exact covered fraction, one strip of a class raster at a time.
 *
 * The compiled inner loop of geoseg.results.counting (see that module and
 * geoseg/results/coverage.py for the method): the zones' edges, cut into pieces in the strip's
 * pixels, each weighted by the pixels of every class after it in its row. One pass over the
 * pixels of the rows the pieces reach (a histogram of each row up to each piece, then to the
 * row's end) instead of a numpy pass per class and a dozen per piece. Plain C and the buffer
 * protocol: no NumPy headers at build time. The GIL is released while it counts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static void release(Buf *b) {
    if (b->held) {
        PyBuffer_Release(&b->view);
        b->held = 0;
    }
}

/* A C-contiguous buffer of `count` items of format `fmt` (one of "B", "H", "q", "d"), or None
 * when `optional`. */
static int get_buffer(PyObject *obj, Buf *b, const char *name, const char *fmt,
                      Py_ssize_t count, int writable, int optional) {
    b->held = 0;
    if (obj == Py_None) {
        if (optional) return 0;
        PyErr_Format(PyExc_TypeError, "%s: a buffer is required", name);
        return -1;
    }
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) return -1;
    b->held = 1;
    const char *got = b->view.format ? b->view.format : "B";
    if (got[0] == '=' || got[0] == '@' || (got[0] == '<' && PY_LITTLE_ENDIAN)) got++;
    char want = fmt[0];
    int ok = got[0] == want && got[1] == '\0';
    if (!ok && want == 'q' && got[1] == '\0' && got[0] == 'l' && sizeof(long) == 8) ok = 1;
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected items of format '%s', got '%s'", name, fmt,
                     got);
        release(b);
        return -1;
    }
    if (b->view.len != count * b->view.itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items, got %zd", name, count,
                     b->view.len / b->view.itemsize);
        release(b);
        return -1;
    }
    return 0;
}

/* Pixels [a, b) of a row counted into the slot counters `p` (4 interleaved sets of `stride`
 * counters: consecutive pixels of one class do not wait on each other's increment). */
#define COUNT_RANGE(T)                                                                        \
    static void count_range_##T(const T *d, const uint8_t *valid, const uint16_t *lut,       \
                                Py_ssize_t a, Py_ssize_t b, uint32_t *p, Py_ssize_t stride,  \
                                uint16_t ignored) {                                          \
        Py_ssize_t i = a;                                                                    \
        if (valid == NULL) {                                                                 \
            for (; i + 4 <= b; i += 4) {                                                     \
                p[lut[d[i]]]++;                                                              \
                p[stride + lut[d[i + 1]]]++;                                                 \
                p[2 * stride + lut[d[i + 2]]]++;                                             \
                p[3 * stride + lut[d[i + 3]]]++;                                             \
            }                                                                                \
            for (; i < b; i++) p[lut[d[i]]]++;                                               \
        } else {                                                                             \
            for (; i + 4 <= b; i += 4) {                                                     \
                p[valid[i] ? lut[d[i]] : ignored]++;                                         \
                p[stride + (valid[i + 1] ? lut[d[i + 1]] : ignored)]++;                      \
                p[2 * stride + (valid[i + 2] ? lut[d[i + 2]] : ignored)]++;                  \
                p[3 * stride + (valid[i + 3] ? lut[d[i + 3]] : ignored)]++;                  \
            }                                                                                \
            for (; i < b; i++) p[valid[i] ? lut[d[i]] : ignored]++;                          \
        }                                                                                    \
    }

COUNT_RANGE(uint8_t)
COUNT_RANGE(uint16_t)

typedef struct {
    const void *data;
    int wide; /* data of uint16, else uint8 */
    const uint8_t *valid;
    const uint16_t *lut;
    Py_ssize_t h, w, slots; /* slots: counted values (classes and "other"), then one ignored */
    const double *x0, *y0, *x1, *y1, *areas;
    const int64_t *zone, *other;
    Py_ssize_t n, zones; /* n edges; zones: rows of the sums (the last: no neighbour) */
    double *pix, *area, *tot_pix, *tot_area;
} Job;

/* A piece of an edge within one pixel of the strip (col -1: all of it left of the strip). */
typedef struct {
    int32_t row, col;
    int32_t zone, other;
    double dy, right;
} Piece;

typedef struct {
    Piece *items;
    size_t len, cap;
} Pieces;

static int push(Pieces *ps, Piece p) {
    if (ps->len == ps->cap) {
        size_t cap = ps->cap ? 2 * ps->cap : 1024;
        Piece *grown = PyMem_RawRealloc(ps->items, cap * sizeof(Piece));
        if (!grown) return -1;
        ps->items = grown;
        ps->cap = cap;
    }
    ps->items[ps->len++] = p;
    return 0;
}

/* The pieces of every edge in the strip's pixels, as geoseg.results.coverage describes them:
 * each edge cut at the rows, each row part at the columns (the parts left of the strip
 * gathered in column -1, those right of it dropped), each piece with the height it descends
 * (signed: covered area positive) and the part of its own pixel right of it. */
static int cut(const Job *j, Pieces *ps) {
    Py_ssize_t h = j->h, w = j->w;
    for (Py_ssize_t e = 0; e < j->n; e++) {
        double x0 = j->x0[e], y0 = j->y0[e], x1 = j->x1[e], y1 = j->y1[e];
        if (y0 == y1) continue; /* a level edge adds no area */
        double ymin = y0 < y1 ? y0 : y1, ymax = y0 < y1 ? y1 : y0;
        double lo = floor(ymin), hi = ceil(ymax) - 1;
        if (lo < 0) lo = 0;
        if (hi > (double)(h - 1)) hi = (double)(h - 1);
        double slope = (x1 - x0) / (y1 - y0);
        int down = y1 > y0;
        for (Py_ssize_t r = (Py_ssize_t)lo; r <= (Py_ssize_t)hi; r++) {
            double ya = (double)r > ymin ? (double)r : ymin;
            double yb = (double)(r + 1) < ymax ? (double)(r + 1) : ymax;
            double xa = x0 + (ya - y0) * slope, xb = x0 + (yb - y0) * slope;
            double dy = down ? yb - ya : -(yb - ya);
            double xlo = xa < xb ? xa : xb, xhi = xa < xb ? xb : xa;
            double clo = floor(xlo), chi = ceil(xhi) - 1;
            if (clo < -1) clo = -1;
            if (clo >= (double)w) continue; /* right of the strip: covers nothing in it */
            if (chi > (double)(w - 1)) chi = (double)(w - 1);
            if (chi < clo) chi = clo;
            double width = xhi - xlo;
            for (Py_ssize_t c = (Py_ssize_t)clo; c <= (Py_ssize_t)chi; c++) {
                double cf = (double)c;
                double lower = c < 0 ? xlo : (cf > xlo ? cf : xlo);
                double upper = cf + 1 < xhi ? cf + 1 : xhi;
                double share = dy;
                if (width > 0) share = dy * ((upper - lower) / width); /* its part of the row part */
                double right = cf + 1 - (lower + upper) * 0.5;
                right = right < 0 ? 0 : (right > 1 ? 1 : right);
                Piece p = {(int32_t)r, (int32_t)c, (int32_t)j->zone[e], (int32_t)j->other[e],
                           share, right * share};
                if (push(ps, p) < 0) return -1;
            }
        }
    }
    return 0;
}

static void count_row_part(const Job *j, Py_ssize_t r, Py_ssize_t a, Py_ssize_t b, uint32_t *p,
                           Py_ssize_t stride) {
    Py_ssize_t off = r * j->w;
    const uint8_t *valid = j->valid ? j->valid + off : NULL;
    if (j->wide)
        count_range_uint16_t((const uint16_t *)j->data + off, valid, j->lut, a, b, p, stride,
                             (uint16_t)j->slots);
    else
        count_range_uint8_t((const uint8_t *)j->data + off, valid, j->lut, a, b, p, stride,
                            (uint16_t)j->slots);
}

/* The slot of pixel (r, c), or `slots` when it is invalid. */
static Py_ssize_t slot_at(const Job *j, Py_ssize_t r, Py_ssize_t c) {
    Py_ssize_t i = r * j->w + c;
    if (j->valid && !j->valid[i]) return j->slots;
    return j->wide ? j->lut[((const uint16_t *)j->data)[i]] : j->lut[((const uint8_t *)j->data)[i]];
}

/* The work, without the GIL; -1 when out of memory. */
static int run(const Job *j) {
    Py_ssize_t h = j->h, k = j->slots, stride = k + 1;
    Pieces ps = {NULL, 0, 0};
    int64_t *start = PyMem_RawCalloc((size_t)h + 2, sizeof(int64_t));
    uint32_t *p = PyMem_RawMalloc(4 * (size_t)stride * sizeof(uint32_t));
    double *sum = PyMem_RawMalloc((size_t)stride * sizeof(double));
    double *dsum = PyMem_RawCalloc((size_t)j->zones, sizeof(double));
    uint8_t *touched = PyMem_RawCalloc((size_t)j->zones, 1);
    int64_t *touched_list = PyMem_RawMalloc((size_t)j->zones * sizeof(int64_t));
    Piece *sorted = NULL;
    int status = -1;
    if (!start || !p || !sum || !dsum || !touched || !touched_list) goto done;
    if (cut(j, &ps) < 0) goto done;
    sorted = PyMem_RawMalloc((ps.len + 1) * sizeof(Piece));
    if (!sorted) goto done;
    /* the pieces by row (a counting sort), then by column within a row (insertion: few) */
    for (size_t i = 0; i < ps.len; i++) start[ps.items[i].row + 2]++;
    for (Py_ssize_t r = 0; r < h; r++) start[r + 2] += start[r + 1];
    for (size_t i = 0; i < ps.len; i++) sorted[start[ps.items[i].row + 1]++] = ps.items[i];
    /* start[r] is now where row r begins */
    for (Py_ssize_t r = 0; r < h; r++) {
        for (int64_t a = start[r] + 1; a < start[r + 1]; a++) {
            Piece v = sorted[a];
            int64_t b = a - 1;
            while (b >= start[r] && sorted[b].col > v.col) {
                sorted[b + 1] = sorted[b];
                b--;
            }
            sorted[b + 1] = v;
        }
    }
    int totals = j->tot_pix != NULL;
    for (Py_ssize_t r = 0; r < h; r++) {
        int64_t first = start[r], last = start[r + 1];
        if (first == last && !totals) continue; /* no zone reaches this row */
        double ar = j->areas ? j->areas[r] : 1.0;
        memset(p, 0, 4 * (size_t)stride * sizeof(uint32_t));
        Py_ssize_t cur = 0, ntouched = 0;
        for (int64_t q = first; q < last; q++) {
            const Piece *pc = &sorted[q];
            Py_ssize_t col = pc->col;
            /* the pixels before the piece's and its own: "after" starts right of it */
            if (col + 1 > cur) {
                count_row_part(j, r, cur, col + 1, p, stride);
                cur = col + 1;
            }
            for (Py_ssize_t s = 0; s < k; s++)
                sum[s] = (double)p[s] + p[stride + s] + p[2 * stride + s] + p[3 * stride + s];
            double dy = pc->dy;
            int64_t z = pc->zone, o = pc->other;
            double *pz = j->pix + z * k, *po = j->pix + o * k;
            for (Py_ssize_t s = 0; s < k; s++) {
                pz[s] -= dy * sum[s];
                po[s] += dy * sum[s];
            }
            if (j->area) {
                double *az = j->area + z * k, *ao = j->area + o * k, da = dy * ar;
                for (Py_ssize_t s = 0; s < k; s++) {
                    az[s] -= da * sum[s];
                    ao[s] += da * sum[s];
                }
            }
            dsum[z] += dy;
            dsum[o] -= dy;
            if (!touched[z]) {
                touched[z] = 1;
                touched_list[ntouched++] = z;
            }
            if (!touched[o]) {
                touched[o] = 1;
                touched_list[ntouched++] = o;
            }
            if (col >= 0) { /* the piece's own pixel: the part of it right of the piece */
                Py_ssize_t s = slot_at(j, r, col);
                if (s < k) {
                    double part = pc->right;
                    pz[s] += part;
                    po[s] -= part;
                    if (j->area) {
                        j->area[z * k + s] += part * ar;
                        j->area[o * k + s] -= part * ar;
                    }
                }
            }
        }
        if (cur < j->w) count_row_part(j, r, cur, j->w, p, stride);
        for (Py_ssize_t s = 0; s < k; s++)
            sum[s] = (double)p[s] + p[stride + s] + p[2 * stride + s] + p[3 * stride + s];
        /* every piece counted the pixels after it: the row's whole count, less those before */
        for (Py_ssize_t t = 0; t < ntouched; t++) {
            int64_t z = touched_list[t];
            double d = dsum[z];
            double *pz = j->pix + z * k;
            for (Py_ssize_t s = 0; s < k; s++) pz[s] += d * sum[s];
            if (j->area) {
                double *az = j->area + z * k, da = d * ar;
                for (Py_ssize_t s = 0; s < k; s++) az[s] += da * sum[s];
            }
            dsum[z] = 0.0;
            touched[z] = 0;
        }
        if (totals) {
            for (Py_ssize_t s = 0; s < k; s++) {
                j->tot_pix[s] += sum[s];
                if (j->tot_area) j->tot_area[s] += sum[s] * ar;
            }
        }
    }
    status = 0;
done:
    PyMem_RawFree(ps.items);
    PyMem_RawFree(sorted);
    PyMem_RawFree(start);
    PyMem_RawFree(p);
    PyMem_RawFree(sum);
    PyMem_RawFree(dsum);
    PyMem_RawFree(touched);
    PyMem_RawFree(touched_list);
    return status;
}

PyDoc_STRVAR(count_strip_doc,
             "count_strip(data, valid, lut, height, width, slots, x0, y0, x1, y1, zone, other, "
             "zones, areas, pix, area, tot_pix, tot_area)\n\n"
             "Add one strip's fraction-weighted pixels (and m^2) by (zone, slot) into `pix` (and "
             "`area`), and its whole count by slot into `tot_pix` (and `tot_area`) when given.\n"
             "`data`: uint8 or uint16 pixels, row-major; `valid`: uint8 mask or None; `lut`: "
             "uint16 slot of each value (`slots`: ignored); the zones' edges (x0, y0) -> (x1, y1) "
             "in the strip's pixels (x = column, y = row), each of a `zone` and shared with "
             "`other` (0 .. zones - 1, negated for it); `areas`: m^2 of a pixel by row, or None.");

static PyObject *count_strip(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_data, *o_valid, *o_lut, *o_x0, *o_y0, *o_x1, *o_y1, *o_zone, *o_other;
    PyObject *o_areas, *o_pix, *o_area, *o_tot_pix, *o_tot_area;
    Py_ssize_t h, w, slots, zones;
    if (!PyArg_ParseTuple(args, "OOOnnnOOOOOOnOOOOO", &o_data, &o_valid, &o_lut, &h, &w, &slots,
                          &o_x0, &o_y0, &o_x1, &o_y1, &o_zone, &o_other, &zones, &o_areas,
                          &o_pix, &o_area, &o_tot_pix, &o_tot_area))
        return NULL;
    if (h < 0 || w < 0 || h > INT32_MAX || w > INT32_MAX || slots < 1 || slots > 65535 ||
        zones < 1 || zones > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "count_strip: bad sizes");
        return NULL;
    }
    Buf data, valid, lut, x0, y0, x1, y1, zone, other, areas, pix, area, tot_pix, tot_area;
    Buf *all[] = {&data, &valid, &lut, &x0, &y0, &x1, &y1, &zone, &other, &areas, &pix, &area,
                  &tot_pix, &tot_area};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) all[i]->held = 0;
    PyObject *result = NULL;
    Job j;
    memset(&j, 0, sizeof(j));
    /* the data's item size decides the table's size */
    if (PyObject_GetBuffer(o_data, &data.view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    data.held = 1;
    j.wide = data.view.itemsize == 2;
    release(&data);
    if (get_buffer(o_data, &data, "data", j.wide ? "H" : "B", h * w, 0, 0) < 0) goto fail;
    if (get_buffer(o_valid, &valid, "valid", "B", h * w, 0, 1) < 0) goto fail;
    if (get_buffer(o_lut, &lut, "lut", "H", j.wide ? 65536 : 256, 0, 0) < 0) goto fail;
    Py_ssize_t n = -1;
    {
        Py_buffer probe;
        if (PyObject_GetBuffer(o_x0, &probe, PyBUF_C_CONTIGUOUS) < 0) goto fail;
        n = probe.len / 8;
        PyBuffer_Release(&probe);
    }
    if (get_buffer(o_x0, &x0, "x0", "d", n, 0, 0) < 0 ||
        get_buffer(o_y0, &y0, "y0", "d", n, 0, 0) < 0 ||
        get_buffer(o_x1, &x1, "x1", "d", n, 0, 0) < 0 ||
        get_buffer(o_y1, &y1, "y1", "d", n, 0, 0) < 0 ||
        get_buffer(o_zone, &zone, "zone", "q", n, 0, 0) < 0 ||
        get_buffer(o_other, &other, "other", "q", n, 0, 0) < 0 ||
        get_buffer(o_areas, &areas, "areas", "d", h, 0, 1) < 0 ||
        get_buffer(o_pix, &pix, "pix", "d", zones * slots, 1, 0) < 0 ||
        get_buffer(o_area, &area, "area", "d", zones * slots, 1, 1) < 0 ||
        get_buffer(o_tot_pix, &tot_pix, "tot_pix", "d", slots, 1, 1) < 0 ||
        get_buffer(o_tot_area, &tot_area, "tot_area", "d", slots, 1, 1) < 0)
        goto fail;
    const uint16_t *t = lut.view.buf;
    for (Py_ssize_t i = 0; i < lut.view.len / 2; i++) {
        if (t[i] > slots) {
            PyErr_SetString(PyExc_ValueError, "count_strip: a slot in lut exceeds slots");
            goto fail;
        }
    }
    const double *ex0 = x0.view.buf, *ey0 = y0.view.buf, *ex1 = x1.view.buf, *ey1 = y1.view.buf;
    const int64_t *zz = zone.view.buf, *oo = other.view.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* finite, and within reach of 32-bit rows and columns */
        int bad = !(fabs(ex0[i]) < 1e9 && fabs(ey0[i]) < 1e9 && fabs(ex1[i]) < 1e9 &&
                    fabs(ey1[i]) < 1e9);
        if (bad || zz[i] < 0 || zz[i] >= zones || oo[i] < 0 || oo[i] >= zones) {
            PyErr_Format(PyExc_ValueError,
                         "count_strip: edge %zd is not finite or its zone (%lld, neighbour "
                         "%lld) is outside 0 .. %zd",
                         i, (long long)zz[i], (long long)oo[i], zones - 1);
            goto fail;
        }
    }
    j.data = data.view.buf;
    j.valid = valid.held ? valid.view.buf : NULL;
    j.lut = t;
    j.h = h;
    j.w = w;
    j.slots = slots;
    j.x0 = ex0;
    j.y0 = ey0;
    j.x1 = ex1;
    j.y1 = ey1;
    j.zone = zz;
    j.other = oo;
    j.areas = areas.held ? areas.view.buf : NULL;
    j.n = n;
    j.zones = zones;
    j.pix = pix.view.buf;
    j.area = area.held ? area.view.buf : NULL;
    j.tot_pix = tot_pix.held ? tot_pix.view.buf : NULL;
    j.tot_area = tot_area.held ? tot_area.view.buf : NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS status = run(&j);
    Py_END_ALLOW_THREADS if (status < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    result = Py_None;
    Py_INCREF(result);
fail:
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) release(all[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"count_strip", count_strip, METH_VARARGS, count_strip_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_zonal",
    "The compiled inner loop of geoseg stats (see geoseg.results.counting).", -1, methods, NULL,
    NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__zonal(void) { return PyModule_Create(&module); }
