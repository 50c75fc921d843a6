; Requantize: Y[M, N] (i8) = saturate(round_half_even(f32(X) * SCALE[n]) + ZERO[n]), with
; X int32, one fp32 scale and one int32 zero point per column (per output channel), as a
; quantized layer's int32 accumulator becomes its int8 output.
;
; The per-column parameters are loaded once; X is walked in blocks of TR rows. vreq reads
; them with b_rs = c_rs = 0 (the same row for every row of the block) and b_cs = c_cs = 1
; (one value per column). Blocks alternate between two X and two Y buffers so the load of
; block i + 1 and the store of block i - 1 overlap the vreq of block i:
;   XFREE + s    vector -> load    X slot s has been read
;   XLOADED + s  load -> vector    X slot s has arrived (and, for the first block, the parameters)
;   YDONE + s    vector -> store   Y slot s holds a finished block
;   YFREE + s    store -> vector   Y slot s has been written out
; XFREE and YFREE start with one token per slot. M must be a multiple of TR.

.equ M, 64
.equ N, 64
.equ TR, ARRAY_ROWS

.equ MT, M // TR

; The sizes must be whole, non-zero numbers of tiles.
.if M % TR + (MT == 0)
  .error "the sizes must be non-zero multiples of the tile sizes"
.endif
.equ X_BLOCK, TR * N * 4
.equ Y_BLOCK, TR * N

.equ SCALE_BUF, 0
.equ ZERO_BUF, N * 4
.equ X_BUF, 2 * N * 4               ; two X blocks
.equ Y_BUF, X_BUF + 2 * X_BLOCK     ; two Y blocks

.equ X_DRAM, 0
.equ SCALE_DRAM, M * N * 4
.equ ZERO_DRAM, SCALE_DRAM + N * 4
.equ Y_DRAM, ZERO_DRAM + N * 4

.equ XFREE, 1
.equ XLOADED, 3
.equ YDONE, 5
.equ YFREE, 7

.input  X dram=X_DRAM shape=(M, N) dtype=i32
.input  SCALE dram=SCALE_DRAM shape=(N,) dtype=f32
.input  ZERO dram=ZERO_DRAM shape=(N,) dtype=i32
.output Y dram=Y_DRAM shape=(M, N) dtype=i8

.for s in 0..2
  sync engine=load signal=XFREE + s
  sync engine=store signal=YFREE + s
.endfor
; Ordered before every vreq by the first block's XLOADED: a signal covers all earlier
; instructions of its engine.
dma_load esize=4 dram=SCALE_DRAM local=SCALE_BUF n0=N
dma_load esize=4 dram=ZERO_DRAM local=ZERO_BUF n0=N

.for i in 0..MT
  .equ S, i % 2
  .equ X_SLOT, X_BUF + S * X_BLOCK
  .equ Y_SLOT, Y_BUF + S * Y_BLOCK
  dma_load esize=4 dram=X_DRAM + i * X_BLOCK local=X_SLOT n0=TR * N wait=XFREE + S signal=XLOADED + S
  sync engine=vector wait=YFREE + S
  vreq dtype=i8 dst=Y_SLOT dst_rs=N a=X_SLOT a_rs=N b=SCALE_BUF b_rs=0 b_cs=1 c=ZERO_BUF c_rs=0 c_cs=1 rows=TR cols=N wait=XLOADED + S signal=YDONE + S
  sync engine=vector signal=XFREE + S
  dma_store dram=Y_DRAM + i * Y_BLOCK local=Y_SLOT n0=TR * N wait=YDONE + S signal=YFREE + S
.endfor
end
