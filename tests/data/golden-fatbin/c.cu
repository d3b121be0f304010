// Golden fat binary for tests/test_fatbin.py (see tests/data/README.md).
__global__ void add_c(float *a, float b) { a[threadIdx.x] += b; }
void launch_c(float *a) { add_c<<<1, 32>>>(a, 1.0f); }
