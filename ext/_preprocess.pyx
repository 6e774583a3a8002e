# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, nonecheck=False, initializedcheck=False
"""Fused area-resize + normalise kernel.

The resampling weights come from ``xray_infer.preprocess.area_weights`` (the one definition of
the resize); this kernel only applies them. Each output row is built by a vertical pass (a
weighted sum of whole input rows into a per-thread scratch row, contiguous and vectorisable)
followed by a short horizontal pass, then written normalised into caller-owned memory.
The kernel never raises and never allocates; ``xray_infer.preprocess`` validates everything.
"""
from cython.parallel cimport prange, threadid

cdef extern from *:
    """
    #ifdef _OPENMP
    #define XRAY_HAVE_OPENMP 1
    #else
    #define XRAY_HAVE_OPENMP 0
    #endif
    """
    int XRAY_HAVE_OPENMP

#: True when the module was compiled with OpenMP (``threads > 1`` splits rows across cores).
OPENMP = bool(XRAY_HAVE_OPENMP)

ctypedef fused pixel_t:
    unsigned char
    unsigned short
    float


cdef inline void _row(const pixel_t[:, ::1] img, Py_ssize_t oy,
                      const int[::1] ystart, const int[::1] ycount, const float[:, ::1] yw,
                      const int[::1] xstart, const int[::1] xcount, const float[:, ::1] xw,
                      float scale, float offset, float* row, float[:, ::1] out) noexcept nogil:
    cdef Py_ssize_t w_in = img.shape[1]
    cdef Py_ssize_t x, j, ox, k0 = ystart[oy]
    cdef float wy, acc
    cdef const pixel_t* src = &img[k0, 0]
    wy = yw[oy, 0]
    for x in range(w_in):
        row[x] = wy * src[x]
    for j in range(1, ycount[oy]):
        wy = yw[oy, j]
        src = &img[k0 + j, 0]
        for x in range(w_in):
            row[x] += wy * src[x]
    for ox in range(out.shape[1]):
        acc = 0.0
        for j in range(xcount[ox]):
            acc = acc + xw[ox, j] * row[xstart[ox] + j]
        out[oy, ox] = acc * scale + offset


def resize_normalise(const pixel_t[:, ::1] img,
                     const int[::1] ystart, const int[::1] ycount, const float[:, ::1] yw,
                     const int[::1] xstart, const int[::1] xcount, const float[:, ::1] xw,
                     float scale, float offset,
                     float[:, ::1] out, float[:, ::1] scratch, int threads=1):
    """Write ``(area_resize(img) * scale + offset)`` into ``out``; no validation here.

    ``scratch`` must hold ``threads`` rows of at least ``img.shape[1]`` floats.
    """
    cdef Py_ssize_t oy, n_out = out.shape[0]
    with nogil:
        if threads <= 1:
            for oy in range(n_out):
                _row(img, oy, ystart, ycount, yw, xstart, xcount, xw, scale, offset,
                     &scratch[0, 0], out)
        else:
            for oy in prange(n_out, num_threads=threads, schedule="static"):
                _row(img, oy, ystart, ycount, yw, xstart, xcount, xw, scale, offset,
                     &scratch[threadid(), 0], out)
