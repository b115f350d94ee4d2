// Internal (non-ABI) helpers shared by marching_cubes.cu and marching_cubes_host.cpp.
#ifndef S4D_MC_INTERNAL_H_
#define S4D_MC_INTERNAL_H_

// Sets the thread's marching-cubes error message; returns `code`.
int s4d_mc_set_error(int code, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void s4d_mc_clear_error();

// The interpolation value of non-finite samples: float32(min(level - 1, min finite sample)).
float s4d_mc_outside_value(double level, bool any_finite, float min_finite);

#endif  // S4D_MC_INTERNAL_H_
