// Types for build-wasm.mjs, so tests can import it under strict tsc.
export declare const TARGETS: Record<"matmul" | "elementwise" | "attentionDecode", { source: string; output: string; variants: Record<string, string[]> }>;
export declare const OUTPUT: string;
export declare const VARIANTS: Record<string, string[]>;
export declare function buildWasm(target?: "matmul" | "elementwise" | "attentionDecode"): Promise<{ modules: Record<string, Uint8Array>; text: string }>;
