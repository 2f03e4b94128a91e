// route, routeAsync, routeBackward, routeBackwardAsync, updateSelectionBias.
//
// Every option is checked here, against the logits' shape, before a kernel
// runs: wrong kinds of value are TypeErrors, wrong sizes or values are
// RangeErrors, and an option that the chosen mode would silently ignore is a
// RangeError too (so a misread preset fails loudly). Unknown keys are ignored.
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "args.h"
#include "async.h"
#include "families.h"
#include "sparsekit/routing.h"
#include "sparsekit/runtime.h"

namespace sparsekit {
namespace binding {

namespace {

const char* kLogitsShape = "[tokens, experts]";

// Values a parsed RouteOptions points into; kept referenced by async calls.
struct OptionValues {
  std::vector<Napi::Value> keep;
};

bool get_bool(Napi::Env env, const std::string& fn, const Napi::Value& opts, const char* key, bool dflt,
              bool* given = nullptr) {
  Napi::Value v = get_option(env, fn, opts, key);
  if (given) *given = !is_absent(v);
  if (is_absent(v)) return dflt;
  if (!v.IsBoolean()) throw_type(env, fn, std::string(key) + " must be a boolean, got " + describe(v));
  return v.As<Napi::Boolean>().Value();
}

double get_finite(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v) {
  if (!v.IsNumber()) throw_type(env, fn, name + " must be a number, got " + describe(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw_range(env, fn, name + " must be finite, got " + std::to_string(d));
  return d;
}

std::string get_enum(Napi::Env env, const std::string& fn, const Napi::Value& opts, const char* key,
                     const std::vector<std::string>& allowed, const std::string& dflt, bool* given = nullptr) {
  Napi::Value v = get_option(env, fn, opts, key);
  if (given) *given = !is_absent(v);
  std::string list;
  for (size_t i = 0; i < allowed.size(); ++i) list += (i ? "|" : "") + allowed[i];
  if (is_absent(v)) return dflt;
  if (!v.IsString()) throw_type(env, fn, std::string(key) + " must be a string (" + list + "), got " + describe(v));
  std::string s = v.As<Napi::String>().Utf8Value();
  for (const auto& a : allowed)
    if (s == a) return s;
  throw_range(env, fn, std::string(key) + " must be one of " + list + ", got '" + s + "'");
}

// A Float32Array, or a { data, shape } tensor of any rank.
ArrayArg<float> get_float_data(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v,
                               const char* shape_hint) {
  if (v.IsObject() && !v.IsTypedArray() && !v.IsArray() && v.As<Napi::Object>().Has("data")) {
    Napi::Value sh = v.As<Napi::Object>().Get("shape");
    size_t rank = sh.IsArray() ? sh.As<Napi::Array>().Length() : 1;
    return get_tensor<float>(env, fn, name, v, rank == 0 ? 1 : rank, shape_hint).array;
  }
  return get_array<float>(env, fn, name, v);
}

// The same, with exactly `n` elements.
ArrayArg<float> get_float_vector(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v,
                                 int64_t n, const std::string& what) {
  ArrayArg<float> a = get_float_data(env, fn, name, v, what.c_str());
  if (a.length != n)
    throw_range(env, fn, name + " has " + std::to_string(a.length) + " elements but must have " + std::to_string(n) +
                             " " + what);
  return a;
}

void check_finite(Napi::Env env, const std::string& fn, const std::string& name, const float* p, int64_t n,
                  int64_t row) {
  int64_t i = find_non_finite(p, n);
  if (i < 0) return;
  std::string where = row > 0 ? " (token " + std::to_string(i / row) + ", expert " + std::to_string(i % row) + ")" : "";
  throw_range(env, fn, name + " must be finite: element " + std::to_string(i) + where + " is " +
                           (std::isnan(p[i]) ? "NaN" : (p[i] > 0 ? "Infinity" : "-Infinity")) +
                           " (mask an expert with a large negative finite logit instead)");
}

const char* mode_name(RouteMode m) {
  return m == RouteMode::kTopK ? "top-k" : (m == RouteMode::kExpertChoice ? "expert-choice" : "hash");
}

// Throws when an option the mode does not use was given.
void reject_unused(Napi::Env env, const std::string& fn, const Napi::Value& opts, RouteMode mode, const char* key,
                   const char* why) {
  if (!is_absent(get_option(env, fn, opts, key)))
    throw_range(env, fn, std::string(key) + " is not used by mode '" + mode_name(mode) + "' (" + why + "); remove it");
}

RouteOptions parse_route_options(Napi::Env env, const std::string& fn, const Napi::Value& opts, int64_t T, int64_t E,
                                 OptionValues* vals) {
  if (!is_absent(opts) && (!opts.IsObject() || opts.IsArray() || opts.IsTypedArray() || opts.IsFunction()))
    throw_type(env, fn, "options must be an object, got " + describe(opts));
  RouteOptions o;
  std::string mode = get_enum(env, fn, opts, "mode", {"top-k", "expert-choice", "hash"}, "top-k");
  o.mode = mode == "top-k" ? RouteMode::kTopK : (mode == "expert-choice" ? RouteMode::kExpertChoice : RouteMode::kHash);
  const bool ec = o.mode == RouteMode::kExpertChoice, hash = o.mode == RouteMode::kHash;

  std::string score = get_enum(env, fn, opts, "score", {"softmax", "sigmoid", "none"}, "softmax");
  o.score = score == "softmax" ? RouteScore::kSoftmax : (score == "sigmoid" ? RouteScore::kSigmoid : RouteScore::kNone);
  o.score_before_topk = get_bool(env, fn, opts, "scoreBeforeTopK", true);
  if (!o.score_before_topk && o.mode != RouteMode::kTopK)
    throw_range(env, fn, std::string("scoreBeforeTopK: false is only meaningful in mode 'top-k' (mode '") + mode +
                             "' scores every expert first)");

  // k
  Napi::Value kv = get_option(env, fn, opts, "k");
  if (ec) {
    if (!is_absent(kv))
      throw_range(env, fn, "k is not used by mode 'expert-choice' (each expert takes ceil(T·capacityFactor/E) tokens, "
                           "so tokens get a varying number of experts); remove it");
    o.k = 1;
  } else {
    o.k = is_absent(kv) ? 1 : get_dim(env, fn, "k", kv);
    if (o.k > E)
      throw_range(env, fn, "k must be ≤ experts: k = " + std::to_string(o.k) + " but logits have " + std::to_string(E) +
                               " experts (logits.shape[1])");
    if (T * o.k > kMaxDim)
      throw_range(env, fn, "tokens·k = " + std::to_string(T * o.k) + " slots exceed 2^31−1");
  }

  o.renormalize = get_bool(env, fn, opts, "renormalize", false);
  if (o.renormalize && o.score == RouteScore::kNone)
    throw_range(env, fn, "renormalize needs score 'softmax' or 'sigmoid' (raw logits can sum to 0)");
  Napi::Value sf = get_option(env, fn, opts, "scalingFactor");
  o.scaling_factor = is_absent(sf) ? 1.f : static_cast<float>(get_finite(env, fn, "scalingFactor", sf));

  // Selection bias (DeepSeek-V3 auxiliary-loss-free balancing).
  Napi::Value bv = get_option(env, fn, opts, "selectionBias");
  if (!is_absent(bv)) {
    if (o.mode != RouteMode::kTopK)
      throw_range(env, fn, std::string("selectionBias is not used by mode '") + mode + "' (it biases top-k selection); remove it");
    auto b = get_float_vector(env, fn, "selectionBias", bv, E, "(one per expert, logits.shape[1])");
    check_finite(env, fn, "selectionBias", b.data, b.length, 0);
    o.selection_bias = b.data;
    vals->keep.push_back(b.value);
  }

  // Group-limited selection.
  Napi::Value gv = get_option(env, fn, opts, "groups");
  Napi::Value tgv = get_option(env, fn, opts, "topkGroups");
  bool gs_given = false;
  std::string gscore = get_enum(env, fn, opts, "groupScore", {"max", "sum-top2"}, "max", &gs_given);
  if (!is_absent(gv)) {
    if (o.mode != RouteMode::kTopK)
      throw_range(env, fn, std::string("groups is not used by mode '") + mode + "' (group-limited top-k); remove it");
    o.groups = get_dim(env, fn, "groups", gv);
    if (E % o.groups != 0)
      throw_range(env, fn, "experts (" + std::to_string(E) + ") must be divisible by groups (" +
                               std::to_string(o.groups) + ")");
    if (is_absent(tgv)) throw_type(env, fn, "topkGroups must be an integer when groups is given, got undefined");
    o.topk_groups = get_dim(env, fn, "topkGroups", tgv);
    if (o.topk_groups > o.groups)
      throw_range(env, fn, "topkGroups (" + std::to_string(o.topk_groups) + ") must be ≤ groups (" +
                               std::to_string(o.groups) + ")");
    o.group_score = gscore == "max" ? GroupScore::kMax : GroupScore::kSumTop2;
    int64_t per = E / o.groups;
    if (o.group_score == GroupScore::kSumTop2 && per < 2)
      throw_range(env, fn, "groupScore 'sum-top2' needs ≥ 2 experts per group, but experts/groups = " +
                               std::to_string(per));
    if (o.k > o.topk_groups * per)
      throw_range(env, fn, "k (" + std::to_string(o.k) + ") exceeds the " + std::to_string(o.topk_groups * per) +
                               " experts in topkGroups (" + std::to_string(o.topk_groups) + ") groups of " +
                               std::to_string(per));
  } else if (!is_absent(tgv) || gs_given) {
    throw_range(env, fn, std::string(!is_absent(tgv) ? "topkGroups" : "groupScore") + " needs groups; set groups too");
  }

  // Noise, jitter, seed.
  Napi::Value nv = get_option(env, fn, opts, "noiseLogits");
  if (!is_absent(nv)) {
    if (hash) reject_unused(env, fn, opts, o.mode, "noiseLogits", "hash routing ignores scores for selection");
    auto n = get_float_vector(env, fn, "noiseLogits", nv, T * E, "(same shape as logits, [tokens, experts])");
    check_finite(env, fn, "noiseLogits", n.data, n.length, E);
    o.noise_logits = n.data;
    vals->keep.push_back(n.value);
  }
  Napi::Value jv = get_option(env, fn, opts, "jitter");
  if (!is_absent(jv)) {
    if (hash) reject_unused(env, fn, opts, o.mode, "jitter", "hash routing ignores scores for selection");
    double j = get_finite(env, fn, "jitter", jv);
    if (j < 0 || j >= 1) throw_range(env, fn, "jitter must be in [0, 1), got " + std::to_string(j));
    o.jitter = j;
  }
  Napi::Value sv = get_option(env, fn, opts, "seed");
  if (!is_absent(sv)) {
    if (!sv.IsNumber()) throw_type(env, fn, "seed must be an integer, got " + describe(sv));
    double d = sv.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d) || std::floor(d) != d || d < 0 || d > 9007199254740991.0)
      throw_range(env, fn, "seed must be an integer in [0, 2^53−1], got " + std::to_string(d));
    o.seed = static_cast<uint64_t>(d);
  }

  // Capacity.
  Napi::Value cv = get_option(env, fn, opts, "capacityFactor");
  if (!is_absent(cv)) {
    double c = get_finite(env, fn, "capacityFactor", cv);
    if (c < 0) throw_range(env, fn, "capacityFactor must be ≥ 0 (0 = dropless), got " + std::to_string(c));
    o.capacity_factor = c;
  }
  if (ec && !(o.capacity_factor > 0))
    throw_range(env, fn, "mode 'expert-choice' needs capacityFactor > 0 (each expert takes ceil(T·capacityFactor/E) tokens)");
  bool dp_given = false;
  std::string dp = get_enum(env, fn, opts, "dropPolicy", {"position", "score"}, "position", &dp_given);
  if (ec && dp_given) reject_unused(env, fn, opts, o.mode, "dropPolicy", "no token-slot is ever dropped");
  o.drop_policy = dp == "position" ? DropPolicy::kPosition : DropPolicy::kScore;

  bool rs_given = false;
  o.random_second_expert = get_bool(env, fn, opts, "randomSecondExpert", false, &rs_given);
  if (rs_given && o.mode != RouteMode::kTopK)
    reject_unused(env, fn, opts, o.mode, "randomSecondExpert", "GShard random routing is a top-2 option");
  if (o.random_second_expert && o.k != 2)
    throw_range(env, fn, "randomSecondExpert needs k = 2 (GShard top-2 gating), got k = " + std::to_string(o.k));

  // Hash routing.
  Napi::Value tv = get_option(env, fn, opts, "tokenIds");
  if (hash) {
    if (is_absent(tv))
      throw_type(env, fn, "tokenIds must be an Int32Array [tokens] for mode 'hash', got " + describe(tv));
    auto ids = get_array<int32_t>(env, fn, "tokenIds", tv);
    if (ids.length != T)
      throw_range(env, fn, "tokenIds has " + std::to_string(ids.length) + " elements but logits have " +
                               std::to_string(T) + " tokens (logits.shape[0])");
    o.token_ids = ids.data;
    vals->keep.push_back(ids.value);
  } else if (!is_absent(tv)) {
    reject_unused(env, fn, opts, o.mode, "tokenIds", "only hash routing reads token ids");
  }

  // Losses.
  Napi::Value av = get_option(env, fn, opts, "aux");
  if (!is_absent(av)) {
    if (!av.IsObject() || av.IsArray() || av.IsTypedArray() || av.IsFunction())
      throw_type(env, fn, "aux must be an object { loadBalance?, zLoss?, importance?, sequenceBalance?, sequenceLength?, gradients? }, got " +
                              describe(av));
    auto coef = [&](const char* key, bool* on, double* c) {
      Napi::Value v = av.As<Napi::Object>().Get(key);
      if (is_absent(v)) return;
      double d = get_finite(env, fn, std::string("aux.") + key, v);
      if (d < 0) throw_range(env, fn, std::string("aux.") + key + " (a loss coefficient) must be ≥ 0, got " + std::to_string(d));
      *on = true;
      *c = d;
    };
    coef("loadBalance", &o.load_balance, &o.load_balance_coef);
    coef("zLoss", &o.z_loss, &o.z_loss_coef);
    coef("importance", &o.importance, &o.importance_coef);
    coef("sequenceBalance", &o.sequence_balance, &o.sequence_balance_coef);
    Napi::Value sl = av.As<Napi::Object>().Get("sequenceLength");
    if (!is_absent(sl)) {
      if (!o.sequence_balance) throw_range(env, fn, "aux.sequenceLength needs aux.sequenceBalance; set it too");
      o.sequence_length = get_dim(env, fn, "aux.sequenceLength", sl);
      if (T % o.sequence_length != 0)
        throw_range(env, fn, "tokens (" + std::to_string(T) + ") must be a multiple of aux.sequenceLength (" +
                                 std::to_string(o.sequence_length) + ")");
    }
    Napi::Value gr = av.As<Napi::Object>().Get("gradients");
    if (!is_absent(gr)) {
      if (!gr.IsBoolean()) throw_type(env, fn, "aux.gradients must be a boolean, got " + describe(gr));
      o.loss_gradients = gr.As<Napi::Boolean>().Value();
    }
  }
  return o;
}

Napi::Value copy_i32(Napi::Env env, const int32_t* p, int64_t n) {
  auto a = Napi::Int32Array::New(env, static_cast<size_t>(n));
  if (n) std::memcpy(a.Data(), p, static_cast<size_t>(n) * 4);
  return a;
}
Napi::Value copy_f32(Napi::Env env, const float* p, int64_t n) {
  auto a = Napi::Float32Array::New(env, static_cast<size_t>(n));
  if (n) std::memcpy(a.Data(), p, static_cast<size_t>(n) * 4);
  return a;
}

Napi::Value plan_to_js(Napi::Env env, const RoutePlan& p) {
  Napi::Object o = Napi::Object::New(env);
  const int64_t T = p.tokens, E = p.experts, k = p.k;
  o.Set("tokens", Napi::Number::New(env, double(T)));
  o.Set("experts", Napi::Number::New(env, double(E)));
  o.Set("k", Napi::Number::New(env, double(k)));
  o.Set("capacity", Napi::Number::New(env, double(p.capacity)));
  o.Set("expertIds", copy_i32(env, p.expert_ids.data(), T * k));
  o.Set("weights", copy_f32(env, p.weights.data(), T * k));
  o.Set("tokensPerExpert", copy_i32(env, p.tokens_per_expert.data(), E));
  o.Set("expertOffsets", copy_i32(env, p.expert_offsets.data(), E + 1));
  o.Set("sortedSlots", copy_i32(env, p.sorted_slots.data(), p.num_kept));
  o.Set("dropped", copy_i32(env, p.dropped.data(), static_cast<int64_t>(p.dropped.size())));
  Napi::Object aux = Napi::Object::New(env);
  auto loss = [&](const char* name, const RouteLoss& l) {
    if (!l.computed) return;
    Napi::Object lo = Napi::Object::New(env);
    lo.Set("value", Napi::Number::New(env, l.value));
    if (l.grad.size()) lo.Set("grad", copy_f32(env, l.grad.data(), T * E));
    aux.Set(name, lo);
  };
  loss("loadBalance", p.load_balance);
  loss("zLoss", p.z_loss);
  loss("importance", p.importance);
  loss("sequenceBalance", p.sequence_balance);
  o.Set("aux", aux);
  return o;
}

// route(logits, options?) → RoutingPlan
Napi::Value RouteImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "routeAsync" : "route";
  auto logits = get_tensor<float>(env, fn, "logits", info[0], 2, kLogitsShape);
  const int64_t T = logits.dim(0), E = logits.dim(1);
  if (T * E > kMaxDim) throw_range(env, fn, "logits has more than 2^31−1 elements");
  OptionValues vals;
  auto o = std::make_shared<RouteOptions>(
      parse_route_options(env, fn, info.Length() > 1 ? info[1] : env.Undefined(), T, E, &vals));
  check_finite(env, fn, "logits", logits.data(), T * E, E);

  auto plan = std::make_shared<RoutePlan>();
  const float* ldata = logits.data();
  Isa isa = active_isa();
  auto kernel = [o, plan, ldata, T, E, isa]() -> Status { return route(ldata, T, E, *o, isa, plan.get()); };
  auto result = [plan](Napi::Env e, const std::vector<Napi::Value>&) -> Napi::Value { return plan_to_js(e, *plan); };
  std::vector<Napi::Value> keep = {logits.array.value};
  for (auto& v : vals.keep) keep.push_back(v);
  return run_op(env, async, fn, kernel, result, keep);
}

// routeBackward(logits, plan { expertIds, k }, gradWeights, options?) → d loss / d logits [T, E]
Napi::Value RouteBackwardImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "routeBackwardAsync" : "routeBackward";
  auto logits = get_tensor<float>(env, fn, "logits", info[0], 2, kLogitsShape);
  const int64_t T = logits.dim(0), E = logits.dim(1);
  if (T * E > kMaxDim) throw_range(env, fn, "logits has more than 2^31−1 elements");
  Napi::Value pv = info.Length() > 1 ? info[1] : env.Undefined();
  if (!pv.IsObject() || pv.IsArray() || pv.IsTypedArray() || pv.IsFunction())
    throw_type(env, fn, "plan must be the RoutingPlan from route() (an object with expertIds and k), got " + describe(pv));
  Napi::Object po = pv.As<Napi::Object>();
  int64_t k = get_dim(env, fn, "plan.k", po.Get("k"));
  auto ids = get_array<int32_t>(env, fn, "plan.expertIds", po.Get("expertIds"));
  if (ids.length != T * k)
    throw_range(env, fn, "plan.expertIds has " + std::to_string(ids.length) + " elements but tokens·plan.k = " +
                             std::to_string(T * k));
  Napi::Value gv = info.Length() > 2 ? info[2] : env.Undefined();
  auto gw = get_float_vector(env, fn, "gradWeights", gv, T * k, "(one per slot, [tokens, plan.k] like plan.weights)");
  OptionValues vals;
  auto o = std::make_shared<RouteOptions>(
      parse_route_options(env, fn, info.Length() > 3 ? info[3] : env.Undefined(), T, E, &vals));
  if (o->mode != RouteMode::kExpertChoice && k != o->k)
    throw_range(env, fn, "plan.k (" + std::to_string(k) + ") does not match options.k (" + std::to_string(o->k) +
                             "): pass the options the plan was routed with");
  // Expert ids in range and not repeated within a token (the weight formulas
  // assume a set of experts).
  {
    std::vector<int64_t> stamp(static_cast<size_t>(E), -1);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < k; ++j) {
        int32_t e = ids.data[t * k + j];
        if (e < -1 || e >= E)
          throw_range(env, fn, "plan.expertIds[" + std::to_string(t * k + j) + "] = " + std::to_string(e) +
                                   " is not an expert in [0, " + std::to_string(E) + ") (or −1 for an empty slot)");
        if (e < 0) continue;
        if (stamp[e] == t)
          throw_range(env, fn, "plan.expertIds repeats expert " + std::to_string(e) + " for token " + std::to_string(t));
        stamp[e] = t;
      }
  }
  check_finite(env, fn, "logits", logits.data(), T * E, E);
  auto out = Napi::Float32Array::New(env, static_cast<size_t>(T * E));
  float* odata = out.Data();
  const float* ldata = logits.data();
  const int32_t* idata = ids.data;
  const float* gdata = gw.data;
  Isa isa = active_isa();
  auto kernel = [o, ldata, T, E, idata, k, gdata, isa, odata]() -> Status {
    return route_backward(ldata, T, E, *o, idata, k, gdata, isa, odata);
  };
  auto result = [T, E](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {T, E});
  };
  std::vector<Napi::Value> keep = {out, logits.array.value, ids.value, gw.value};
  for (auto& v : vals.keep) keep.push_back(v);
  return run_op(env, async, fn, kernel, result, keep);
}

Napi::Value Route(const Napi::CallbackInfo& info) { return RouteImpl(info, false); }
Napi::Value RouteAsync(const Napi::CallbackInfo& info) { return RouteImpl(info, true); }
Napi::Value RouteBackward(const Napi::CallbackInfo& info) { return RouteBackwardImpl(info, false); }
Napi::Value RouteBackwardAsync(const Napi::CallbackInfo& info) { return RouteBackwardImpl(info, true); }

// updateSelectionBias(bias [E], tokensPerExpert [E], gamma) → new bias [E]
Napi::Value UpdateSelectionBias(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "updateSelectionBias";
  ArrayArg<float> bias = get_float_data(env, fn, "bias", info[0], "[experts]");
  const int64_t E = bias.length;
  if (E < 1) throw_range(env, fn, "bias must have ≥ 1 element (one per expert)");
  check_finite(env, fn, "bias", bias.data, E, 0);
  auto tpe = get_array<int32_t>(env, fn, "tokensPerExpert", info[1]);
  if (tpe.length != E)
    throw_range(env, fn, "tokensPerExpert has " + std::to_string(tpe.length) + " elements but bias has " +
                             std::to_string(E) + " (one per expert)");
  for (int64_t e = 0; e < E; ++e)
    if (tpe.data[e] < 0)
      throw_range(env, fn, "tokensPerExpert[" + std::to_string(e) + "] = " + std::to_string(tpe.data[e]) + " is negative");
  double gamma = get_finite(env, fn, "gamma", info[2]);
  if (gamma < 0) throw_range(env, fn, "gamma (the bias update speed) must be ≥ 0, got " + std::to_string(gamma));
  auto out = Napi::Float32Array::New(env, static_cast<size_t>(E));
  update_selection_bias(bias.data, tpe.data, E, static_cast<float>(gamma), out.Data());
  return out;
}

}  // namespace

void RegisterRouting(Napi::Env env, Napi::Object exports) {
  exports.Set("route", Napi::Function::New(env, Route, "route"));
  exports.Set("routeAsync", Napi::Function::New(env, RouteAsync, "routeAsync"));
  exports.Set("routeBackward", Napi::Function::New(env, RouteBackward, "routeBackward"));
  exports.Set("routeBackwardAsync", Napi::Function::New(env, RouteBackwardAsync, "routeBackwardAsync"));
  exports.Set("updateSelectionBias", Napi::Function::New(env, UpdateSelectionBias, "updateSelectionBias"));
}

}  // namespace binding
}  // namespace sparsekit
