; Strided DMA: gather a sub-matrix of X and write it back to DRAM twice, as is and transposed,
; with no compute at all; the DMA's strides do the indexing.
;
;   G[i, j] = X[ROW0 + i * ROW_STEP, COL0 + j * COL_STEP]   for i < GR, j < GC
;   T = G transposed (GC x GR)
;
; The load reads GR runs of GC elements (ds0 = COL_STEP, ds1 = ROW_STEP * W) into a dense
; GR x GC tile. The first store writes it back row by row; the second swaps the roles of
; the two dimensions in DRAM (ds0 = GR, ds1 = 1), so each row of the tile becomes a
; column of T. Both stores only read the tile, so one wait orders both after the load:
; the second store is behind the first on the store engine's in-order queue.

.equ H, 32
.equ W, 24
.equ ROW0, 1
.equ ROW_STEP, 2
.equ COL0, 3
.equ COL_STEP, 1
.equ GR, 12
.equ GC, 16

.equ X_DRAM, 0
.equ G_DRAM, H * W * 4
.equ T_DRAM, G_DRAM + GR * GC * 4
.equ TILE, 0

.equ LOADED, 1

.input  X dram=X_DRAM shape=(H, W) dtype=f32
.output G dram=G_DRAM shape=(GR, GC) dtype=f32
.output T dram=T_DRAM shape=(GC, GR) dtype=f32

dma_load esize=4 dram=X_DRAM + (ROW0 * W + COL0) * 4 local=TILE n0=GC n1=GR ds0=COL_STEP ds1=ROW_STEP * W ls1=GC signal=LOADED
dma_store esize=4 dram=G_DRAM local=TILE n0=GC n1=GR ds1=GC ls1=GC wait=LOADED
dma_store esize=4 dram=T_DRAM local=TILE n0=GC n1=GR ds0=GR ds1=1 ls1=GC
end
